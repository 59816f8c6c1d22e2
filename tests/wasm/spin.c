/*
 * spin: never returns from proxy_on_request_headers when the request has the
 * header x-spin, so the host's time limit on a callback must stop it.
 * Other requests get the header x-spin-checked: 1 and continue.
 *
 * No configuration.
 */
#include "proxy_wasm.h"

static volatile u32 spins;

PW_EXPORT("proxy_on_request_headers")
u32 proxy_on_request_headers(u32 ctx, size_t num_headers, u32 end_of_stream) {
  (void)ctx;
  (void)num_headers;
  (void)end_of_stream;
  u8 *val;
  size_t len;
  if (pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, "x-spin", &val, &len) ==
      PW_OK) {
    pw_free(val);
    for (;;) spins = spins + 1; /* volatile: the loop stays */
  }
  proxy_replace_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, "x-spin-checked",
                                 14, (const u8 *)"1", 1);
  return PW_CONTINUE;
}
