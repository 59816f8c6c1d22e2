/*
 * bodytrap: inspects whole request bodies (Pause until the end) and traps on
 * one that contains "boom" (stands for any bug a body reaches).
 */
#include "../proxy_wasm.h"

PW_EXPORT("proxy_on_request_body")
u32 proxy_on_request_body(u32 ctx, size_t size, u32 eos) {
  (void)ctx;
  if (!eos) return PW_PAUSE;
  u8 *b;
  size_t l;
  if (size && pw_get_buffer(PW_BUFFER_HTTP_REQUEST_BODY, 0, size, &b, &l) == PW_OK) {
    for (size_t i = 0; i + 4 <= l; i++)
      if (memcmp(b + i, "boom", 4) == 0) __builtin_trap();
    pw_free(b);
  }
  return PW_CONTINUE;
}
