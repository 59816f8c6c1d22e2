/*
 * ticker: counts timer ticks in shared data and reports request properties.
 *
 * No configuration. proxy_on_vm_start and proxy_on_configure return true;
 * proxy_on_configure sets a 10 ms tick period.
 *
 * proxy_on_tick reads the shared value "ticks" (a decimal string; missing
 * counts as 0) with its cas, stores the value plus one with that cas
 * (reading again and retrying once on CasMismatch), and logs "tick" at Info.
 *
 * proxy_on_request_headers sets these request headers, each "?" when the
 * host does not give the value:
 *   x-ticks        the shared value "ticks" ("0" when missing)
 *   x-path         property request.path
 *   x-method       property request.method
 *   x-source       property source.address
 *   x-plugin-name  property plugin_name
 */
#include "proxy_wasm.h"

static const char TICKS[] = "ticks";

PW_EXPORT("proxy_on_vm_start")
u32 proxy_on_vm_start(u32 root_id, size_t vm_config_size) {
  (void)root_id;
  (void)vm_config_size;
  return 1;
}

PW_EXPORT("proxy_on_configure")
u32 proxy_on_configure(u32 root_id, size_t config_size) {
  (void)root_id;
  (void)config_size;
  if (proxy_set_tick_period_milliseconds(10) != PW_OK)
    pw_log(PW_LOG_WARN, "ticker: cannot set the tick period");
  return 1;
}

/* One read-increment-write; the status of the write. */
static u32 bump_ticks(void) {
  u8 *val;
  size_t len;
  u32 cas;
  u32 n = 0;
  u32 st = pw_get_shared(TICKS, &val, &len, &cas);
  if (st == PW_OK) {
    n = pw_atou(val, len);
    pw_free(val);
  } else {
    cas = 0;
  }
  char buf[10];
  size_t blen = pw_utoa(n + 1, buf);
  return proxy_set_shared_data(TICKS, sizeof TICKS - 1, (const u8 *)buf, blen,
                               cas);
}

PW_EXPORT("proxy_on_tick")
void proxy_on_tick(u32 root_id) {
  (void)root_id;
  if (bump_ticks() == PW_CAS_MISMATCH) bump_ticks();
  pw_log(PW_LOG_INFO, "tick");
}

static void set_header(const char *name, const u8 *val, size_t len) {
  proxy_replace_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, name,
                                 pw_strlen(name), len ? val : (const u8 *)"",
                                 len);
}

/* Sets header `name` to the property at path (segments joined by NUL). */
static void set_from_property(const char *name, const char *path,
                              size_t path_size) {
  u8 *val;
  size_t len;
  if (pw_get_property(path, path_size, &val, &len) == PW_OK) {
    set_header(name, val, len);
    pw_free(val);
  } else {
    set_header(name, (const u8 *)"?", 1);
  }
}

#define PATH(lit) lit, sizeof(lit) - 1

PW_EXPORT("proxy_on_request_headers")
u32 proxy_on_request_headers(u32 ctx, size_t num_headers, u32 end_of_stream) {
  (void)ctx;
  (void)num_headers;
  (void)end_of_stream;

  u8 *val;
  size_t len;
  u32 cas;
  u32 st = pw_get_shared(TICKS, &val, &len, &cas);
  if (st == PW_OK) {
    set_header("x-ticks", val, len);
    pw_free(val);
  } else if (st == PW_NOT_FOUND) {
    set_header("x-ticks", (const u8 *)"0", 1);
  } else {
    set_header("x-ticks", (const u8 *)"?", 1);
  }

  set_from_property("x-path", PATH("request\0path"));
  set_from_property("x-method", PATH("request\0method"));
  set_from_property("x-source", PATH("source\0address"));
  set_from_property("x-plugin-name", PATH("plugin_name"));
  return PW_CONTINUE;
}
