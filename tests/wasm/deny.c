/*
 * deny: refuses requests that carry a given header (whatever its value).
 *
 * Configuration: {"header": "x-block"}
 *   header  required; the name is lowercased. Without it proxy_on_configure
 *           returns false.
 *
 * A refused request gets a local response 403, details "blocked", body
 * "blocked by wasm\n", headers content-type: text/plain and
 * x-blocked-by: wasm; the plugin then returns Pause. Other requests continue.
 */
#include "proxy_wasm.h"

static char *header;

PW_EXPORT("proxy_on_configure")
u32 proxy_on_configure(u32 root_id, size_t config_size) {
  (void)root_id;
  u8 *cfg;
  size_t cfg_len;
  if (pw_plugin_config(config_size, &cfg, &cfg_len) != PW_OK) {
    pw_log(PW_LOG_ERROR, "deny: cannot read the plugin configuration");
    return 0;
  }
  char *h;
  size_t hl;
  int found = pw_json_string(cfg, cfg_len, "header", &h, &hl);
  pw_free(cfg);
  if (found != 1 || hl == 0) {
    pw_free(h);
    pw_log(PW_LOG_ERROR, "deny: the configuration needs a string \"header\"");
    return 0;
  }
  pw_lowercase(h, hl);
  pw_free(header);
  header = h;
  return 1;
}

PW_EXPORT("proxy_on_request_headers")
u32 proxy_on_request_headers(u32 ctx, size_t num_headers, u32 end_of_stream) {
  (void)ctx;
  (void)num_headers;
  (void)end_of_stream;
  if (!header) return PW_CONTINUE;

  u8 *val;
  size_t len;
  if (pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, header, &val, &len) != PW_OK)
    return PW_CONTINUE;
  pw_free(val);

  static const struct pw_pair pairs[] = {
      PW_PAIR("content-type", "text/plain"),
      PW_PAIR("x-blocked-by", "wasm"),
  };
  pw_local_response(403, "blocked", "blocked by wasm\n", pairs, 2);
  return PW_PAUSE;
}
