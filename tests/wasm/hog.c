/*
 * hog: when the request has the header x-hog, grows its memory by 16 pages
 * (1 MiB) at a time, touching every new page, until memory.grow fails; it
 * then traps (unreachable). The host's memory limit must stop it, and the
 * host must survive the trap. Other requests continue untouched.
 *
 * No configuration.
 */
#include "proxy_wasm.h"

PW_EXPORT("proxy_on_request_headers")
u32 proxy_on_request_headers(u32 ctx, size_t num_headers, u32 end_of_stream) {
  (void)ctx;
  (void)num_headers;
  (void)end_of_stream;
  u8 *val;
  size_t len;
  if (pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, "x-hog", &val, &len) != PW_OK)
    return PW_CONTINUE;
  pw_free(val);
  for (;;) {
    size_t first = __builtin_wasm_memory_grow(0, 16);
    if (first == (size_t)-1) __builtin_trap();
    for (size_t page = first; page < first + 16; page++)
      *(volatile u8 *)(page * 65536) = 1;
  }
}
