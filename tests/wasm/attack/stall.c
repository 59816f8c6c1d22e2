/*
 * stall: host functions that work (and allocate) on the plugin's behalf with
 * no epoch check.
 *
 * x-rand: N   random_get(ptr, N MiB): the host allocates and fills N MiB before
 *             it checks the range, then answers EFAULT.
 * x-fdwrite: N  fd_write(9, iovs, N, ..) with N iovecs that each name the whole
 *             memory (grown to 4 MiB first): the host concatenates N x 4 MiB
 *             before it looks at the fd.
 * Both then return Continue at once.
 */
#include "../proxy_wasm.h"

__attribute__((import_module("wasi_snapshot_preview1"), import_name("random_get")))
u32 wasi_random_get(u8 *buf, size_t len);
__attribute__((import_module("wasi_snapshot_preview1"), import_name("fd_write")))
u32 wasi_fd_write(u32 fd, const u32 *iovs, size_t n, u32 *written);

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
  (void)ctx; (void)n; (void)eos;
  u32 mib = number("x-rand");
  if (mib) wasi_random_get((u8 *)16, (size_t)mib << 20);
  u32 iov = number("x-fdwrite");
  if (iov) {
    size_t have = __builtin_wasm_memory_size(0);
    if (have < 64) __builtin_wasm_memory_grow(0, 64 - have);
    u32 *iovs = (u32 *)pw_alloc(8 * iov);
    for (u32 i = 0; i < iov; i++) {
      iovs[2 * i] = 0;
      iovs[2 * i + 1] = 64u << 16;
    }
    u32 w;
    wasi_fd_write(9, iovs, iov, &w);
  }
  return PW_CONTINUE;
}
