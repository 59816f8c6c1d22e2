/*
 * flood: proxy_http_call on the plugin's behalf, many times per request.
 *
 * Configuration: {"upstream": "127.0.0.1:PORT"}
 * x-calls: N  dispatches N calls, each carrying the same x-body-kib KiB body
 *             (from the plugin's memory), then Pauses; the request goes on
 *             after the N-th answer. With x-fire instead of Pause it returns
 *             Continue (fire and forget).
 * proxy_on_delete counts deleted contexts in shared data "deleted".
 */
#include "../proxy_wasm.h"

static char *upstream;
static size_t upstream_len;
static u32 want[1024];
static u32 got[1024];

PW_EXPORT("proxy_on_configure")
u32 proxy_on_configure(u32 root_id, size_t config_size) {
  (void)root_id;
  u8 *cfg;
  size_t cfg_len;
  if (pw_plugin_config(config_size, &cfg, &cfg_len) != PW_OK) return 0;
  int uf = pw_json_string(cfg, cfg_len, "upstream", &upstream, &upstream_len);
  pw_free(cfg);
  return uf == 1;
}

static u32 number(const char *name) {
  u8 *v;
  size_t l;
  if (pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, name, &v, &l) != PW_OK) return 0;
  u32 n = 0;
  for (size_t i = 0; i < l; i++) n = n * 10 + (v[i] - '0');
  pw_free(v);
  return n;
}

PW_EXPORT("proxy_on_request_headers")
u32 proxy_on_request_headers(u32 ctx, size_t n, u32 eos) {
  (void)n; (void)eos;
  u8 *dv;
  size_t dl;
  if (pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, "x-deleted", &dv, &dl) == PW_OK) {
    u8 *d;
    size_t l;
    u32 cas;
    if (pw_get_shared("deleted", &d, &l, &cas) == PW_OK)
      proxy_replace_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, "x-deleted", 9, d, l);
    return PW_CONTINUE;
  }
  u32 calls = number("x-calls");
  if (!calls) return PW_CONTINUE;
  size_t body = (size_t)number("x-body-kib") << 10;
  size_t have = (size_t)__builtin_wasm_memory_size(0) << 16;
  if (body + (1 << 16) > have)
    __builtin_wasm_memory_grow(0, (body + (1 << 16) - have + 65535) >> 16);
  struct pw_pair pairs[3] = {
      PW_PAIR(":method", "POST"),
      PW_PAIR(":path", "/flood"),
      PW_PAIR(":authority", "checker"),
  };
  size_t hlen;
  u8 *h = pw_serialize_pairs(pairs, 3, &hlen);
  u32 made = 0;
  for (u32 i = 0; i < calls; i++) {
    u32 token;
    /* the body is whatever lies at 64 KiB: no allocation in the plugin */
    if (proxy_http_call(upstream, upstream_len, h, hlen, (const u8 *)65536, body,
                        NULL, 0, 5000, &token) == PW_OK)
      made++;
  }
  pw_free(h);
  want[ctx & 1023] = made;
  got[ctx & 1023] = 0;
  if (number("x-fire")) return PW_CONTINUE;
  return PW_PAUSE;
}

PW_EXPORT("proxy_on_http_call_response")
void proxy_on_http_call_response(u32 ctx, u32 token, size_t nh, size_t bs, size_t nt) {
  (void)token; (void)nh; (void)bs; (void)nt;
  if (++got[ctx & 1023] >= want[ctx & 1023])
    proxy_continue_stream(PW_STREAM_HTTP_REQUEST);
}

PW_EXPORT("proxy_on_delete")
void proxy_on_delete(u32 ctx) {
  (void)ctx;
  u8 *v;
  size_t l;
  u32 cas;
  u32 n = 0;
  if (pw_get_shared("deleted", &v, &l, &cas) == PW_OK) {
    for (size_t i = 0; i < l; i++) n = n * 10 + (v[i] - '0');
    pw_free(v);
  }
  n++;
  char buf[12];
  int k = 11;
  buf[k] = 0;
  do { buf[--k] = (char)('0' + n % 10); n /= 10; } while (n);
  proxy_set_shared_data("deleted", 7, (const u8 *)buf + k, 11 - k, 0);
}
