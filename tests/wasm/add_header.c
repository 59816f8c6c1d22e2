/*
 * add_header: sets one request header on every request.
 *
 * Configuration: {"header": "x-wasm", "value": "on"}
 *   header  required; the name is lowercased. Without it proxy_on_configure
 *           returns false and the host must refuse the plugin.
 *   value   optional, "1" when absent.
 *
 * The header is set with proxy_replace_header_map_value, so the request
 * carries it exactly once whatever the client sent.
 */
#include "proxy_wasm.h"

static char *header;
static size_t header_len;
static char *value;
static size_t value_len;

PW_EXPORT("proxy_on_configure")
u32 proxy_on_configure(u32 root_id, size_t config_size) {
  (void)root_id;
  u8 *cfg;
  size_t cfg_len;
  if (pw_plugin_config(config_size, &cfg, &cfg_len) != PW_OK) {
    pw_log(PW_LOG_ERROR, "add_header: cannot read the plugin configuration");
    return 0;
  }

  char *h, *v;
  size_t hl, vl;
  int hf = pw_json_string(cfg, cfg_len, "header", &h, &hl);
  int vf = pw_json_string(cfg, cfg_len, "value", &v, &vl);
  pw_free(cfg);
  if (hf != 1 || hl == 0 || vf < 0) {
    pw_free(h);
    pw_free(v);
    pw_log(PW_LOG_ERROR,
           "add_header: the configuration needs a string \"header\"");
    return 0;
  }
  if (vf == 0) {
    v = pw_strndup((const u8 *)"1", 1);
    vl = 1;
    if (!v) {
      pw_free(h);
      return 0;
    }
  }
  pw_lowercase(h, hl);

  /* A new configuration replaces the previous one. */
  pw_free(header);
  pw_free(value);
  header = h;
  header_len = hl;
  value = v;
  value_len = vl;
  return 1;
}

PW_EXPORT("proxy_on_request_headers")
u32 proxy_on_request_headers(u32 ctx, size_t num_headers, u32 end_of_stream) {
  (void)ctx;
  (void)num_headers;
  (void)end_of_stream;
  if (header)
    proxy_replace_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, header,
                                   header_len, (const u8 *)value, value_len);
  return PW_CONTINUE;
}
