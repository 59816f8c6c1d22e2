/*
 * dlp: blocks responses with a local reply.
 *
 * on_response_headers: a request whose path contains "/hdr" gets a local 403.
 * on_response_body: Pause until the end; a body containing "secret" gets a
 *   local 403 instead of being delivered.
 */
#include "../proxy_wasm.h"

static int contains(const u8 *s, size_t n, const char *w) {
  size_t wl = pw_strlen(w);
  for (size_t i = 0; i + wl <= n; i++)
    if (memcmp(s + i, w, wl) == 0) return 1;
  return 0;
}

PW_EXPORT("proxy_on_response_headers")
u32 proxy_on_response_headers(u32 ctx, size_t n, u32 eos) {
  (void)ctx; (void)n; (void)eos;
  u8 *p;
  size_t pl;
  if (pw_get_property("request\0path", 12, &p, &pl) == PW_OK && contains(p, pl, "/hdr")) {
    pw_local_response(403, "blocked", "blocked in response headers\n", NULL, 0);
    return PW_PAUSE;
  }
  proxy_remove_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, "content-length", 14);
  return PW_CONTINUE;
}

PW_EXPORT("proxy_on_response_body")
u32 proxy_on_response_body(u32 ctx, size_t size, u32 eos) {
  (void)ctx;
  if (!eos) return PW_PAUSE;
  u8 *b;
  size_t l;
  if (size && pw_get_buffer(PW_BUFFER_HTTP_RESPONSE_BODY, 0, size, &b, &l) == PW_OK) {
    int bad = contains(b, l, "secret");
    pw_free(b);
    if (bad) {
      pw_local_response(403, "blocked", "blocked in response body\n", NULL, 0);
      return PW_PAUSE;
    }
  }
  return PW_CONTINUE;
}
