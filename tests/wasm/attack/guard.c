/*
 * guard: an ext-auth plugin that also buffers request bodies and stamps responses.
 *
 * Configuration: {"upstream": "127.0.0.1:PORT"}
 *
 * on_request_headers: x-boom traps (stands for any bug a client input reaches);
 *   otherwise GET /check on the upstream with the request's authorization, Pause.
 * on_http_call_response: :status 200 resumes the request, anything else answers 403.
 * on_request_body: Pause until the end of the stream (inspects the whole body).
 * on_response_headers: traps for a path ending in /boom-resp; otherwise removes x-upstream (a header that must never reach the
 *   client) and sets x-guarded: 1.
 */
#include "../proxy_wasm.h"

static char *upstream;
static size_t upstream_len;

PW_EXPORT("proxy_on_configure")
u32 proxy_on_configure(u32 root_id, size_t config_size) {
  (void)root_id;
  u8 *cfg;
  size_t cfg_len;
  if (pw_plugin_config(config_size, &cfg, &cfg_len) != PW_OK) return 0;
  char *u;
  size_t ul;
  int uf = pw_json_string(cfg, cfg_len, "upstream", &u, &ul);
  pw_free(cfg);
  if (uf != 1) return 0;
  upstream = u;
  upstream_len = ul;
  return 1;
}

PW_EXPORT("proxy_on_request_headers")
u32 proxy_on_request_headers(u32 ctx, size_t n, u32 eos) {
  (void)ctx; (void)n; (void)eos;
  u8 *v;
  size_t l;
  if (pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, "x-boom", &v, &l) == PW_OK)
    __builtin_trap();
  u8 *auth;
  size_t auth_len;
  int has = pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, "authorization", &auth,
                          &auth_len) == PW_OK;
  struct pw_pair pairs[4] = {
      PW_PAIR(":method", "GET"),
      PW_PAIR(":path", "/check"),
      PW_PAIR(":authority", "checker"),
      {"authorization", 13, (const char *)auth, auth_len},
  };
  size_t hlen;
  u8 *h = pw_serialize_pairs(pairs, has ? 4 : 3, &hlen);
  pw_free(auth);
  u32 token;
  u32 st = proxy_http_call(upstream, upstream_len, h, hlen, NULL, 0, NULL, 0,
                           5000, &token);
  pw_free(h);
  if (st != PW_OK) {
    pw_local_response(503, "call_failed", "call failed\n", NULL, 0);
  }
  return PW_PAUSE;
}

PW_EXPORT("proxy_on_http_call_response")
void proxy_on_http_call_response(u32 ctx, u32 token, size_t nh, size_t bs,
                                 size_t nt) {
  (void)ctx; (void)token; (void)nh; (void)bs; (void)nt;
  u8 *s;
  size_t sl;
  int ok = pw_get_header(PW_MAP_HTTP_CALL_RESPONSE_HEADERS, ":status", &s,
                         &sl) == PW_OK && pw_eq(s, sl, "200");
  pw_free(s);
  if (!ok) {
    pw_local_response(403, "denied", "denied by guard\n", NULL, 0);
    return;
  }
  proxy_continue_stream(PW_STREAM_HTTP_REQUEST);
}

PW_EXPORT("proxy_on_request_body")
u32 proxy_on_request_body(u32 ctx, size_t size, u32 eos) {
  (void)ctx; (void)size;
  return eos ? PW_CONTINUE : PW_PAUSE;
}

PW_EXPORT("proxy_on_response_headers")
u32 proxy_on_response_headers(u32 ctx, size_t n, u32 eos) {
  (void)ctx; (void)n; (void)eos;
  u8 *p;
  size_t pl;
  if (pw_get_property("request\0path", 12, &p, &pl) == PW_OK && pl >= 10 &&
      memcmp(p + pl - 10, "/boom-resp", 10) == 0)
    __builtin_trap();
  proxy_remove_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, "x-upstream", 10);
  proxy_replace_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, "x-guarded", 9,
                                 (const u8 *)"1", 1);
  return PW_CONTINUE;
}
