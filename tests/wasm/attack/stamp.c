/*
 * stamp: a correct response filter, meant as a global rule: strips x-upstream
 * (a header that must never reach the client), sets x-guarded: 1, and buffers
 * the whole response body (Pause until the end), as a DLP or rewrite plugin
 * does. It never traps.
 */
#include "../proxy_wasm.h"

PW_EXPORT("proxy_on_response_headers")
u32 proxy_on_response_headers(u32 ctx, size_t n, u32 eos) {
  (void)ctx; (void)n; (void)eos;
  proxy_remove_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, "x-upstream", 10);
  proxy_remove_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, "content-length", 14);
  proxy_replace_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, "x-guarded", 9,
                                 (const u8 *)"1", 1);
  return PW_CONTINUE;
}

PW_EXPORT("proxy_on_response_body")
u32 proxy_on_response_body(u32 ctx, size_t size, u32 eos) {
  (void)ctx; (void)size;
  return eos ? PW_CONTINUE : PW_PAUSE;
}
