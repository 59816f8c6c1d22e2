/*
 * reqbody: the usual body-rewrite pattern: drop content-length in the request
 * headers (the length will change), buffer the body, upper-case it at the end.
 */
#include "../proxy_wasm.h"

PW_EXPORT("proxy_on_request_headers")
u32 proxy_on_request_headers(u32 ctx, size_t n, u32 eos) {
  (void)ctx; (void)n; (void)eos;
  proxy_remove_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, "content-length", 14);
  return PW_CONTINUE;
}

PW_EXPORT("proxy_on_request_body")
u32 proxy_on_request_body(u32 ctx, size_t size, u32 eos) {
  (void)ctx;
  if (!eos) return PW_PAUSE;
  u8 *b;
  size_t l;
  if (size && pw_get_buffer(PW_BUFFER_HTTP_REQUEST_BODY, 0, size, &b, &l) == PW_OK) {
    for (size_t i = 0; i < l; i++)
      if (b[i] >= 'a' && b[i] <= 'z') b[i] -= 32;
    proxy_set_buffer_bytes(PW_BUFFER_HTTP_REQUEST_BODY, 0, size, b, l);
    pw_free(b);
  }
  return PW_CONTINUE;
}
