/*
 * misc: ABI corners, each behind a request header; results go upstream as
 * request headers.
 *
 * x-cas:       set_shared_data("fresh-<value>", "v", cas 7) on a key that does
 *              not exist, then get it: x-set-status, x-get-status, x-get-len.
 * x-roundtrip: set_header_map_pairs(request, get_header_map_pairs(request)),
 *              which should change nothing: x-roundtrip-status.
 * x-pause:     returns Pause with nothing to wait for.
 */
#include "../proxy_wasm.h"

PW_IMPORT("proxy_set_header_map_pairs")
u32 proxy_set_header_map_pairs(u32 map, const u8 *ptr, size_t size);

static void put_num(const char *name, u32 n) {
  char buf[12];
  int k = 11;
  buf[k] = 0;
  do { buf[--k] = (char)('0' + n % 10); n /= 10; } while (n);
  proxy_add_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, name, pw_strlen(name),
                             (const u8 *)buf + k, 11 - k);
}

PW_EXPORT("proxy_on_request_headers")
u32 proxy_on_request_headers(u32 ctx, size_t n, u32 eos) {
  (void)ctx; (void)n; (void)eos;
  u8 *v;
  size_t l;
  if (pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, "x-cas", &v, &l) == PW_OK) {
    u8 key[64];
    memcpy(key, "fresh-", 6);
    memcpy(key + 6, v, l);
    u32 set = proxy_set_shared_data((const char *)key, 6 + l, (const u8 *)"v", 1, 7);
    u8 *got;
    size_t gl;
    u32 cas;
    u32 get = proxy_get_shared_data((const char *)key, 6 + l, &got, &gl, &cas);
    put_num("x-set-status", set);
    put_num("x-get-status", get);
    put_num("x-get-len", get == PW_OK ? gl : 999);
  }
  if (pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, "x-roundtrip", &v, &l) == PW_OK) {
    u8 *pairs;
    size_t pl;
    u32 g = proxy_get_header_map_pairs(PW_MAP_HTTP_REQUEST_HEADERS, &pairs, &pl);
    u32 s = g == PW_OK ? proxy_set_header_map_pairs(PW_MAP_HTTP_REQUEST_HEADERS, pairs, pl) : 100 + g;
    put_num("x-roundtrip-status", s);
  }
  if (pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, "x-pause", &v, &l) == PW_OK)
    return PW_PAUSE;
  return PW_CONTINUE;
}
