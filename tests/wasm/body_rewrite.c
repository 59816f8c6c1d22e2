/*
 * body_rewrite: replaces every occurrence of one string by another in the
 * response body.
 *
 * Configuration: {"from": "hello", "to": "HOWDY"}
 *   from  required, not empty.
 *   to    required (may be empty, which deletes every "from").
 *
 * proxy_on_response_headers removes content-length (the length changes).
 * proxy_on_response_body returns Pause until the end of the stream, so the
 * host buffers the whole body; at the end it reads the body, rewrites it,
 * puts it back with proxy_set_buffer_bytes(HttpResponseBody, 0, body_size, ...)
 * and continues. Occurrences are found left to right and do not overlap.
 */
#include "proxy_wasm.h"

static char *from;
static size_t from_len;
static char *to;
static size_t to_len;

PW_EXPORT("proxy_on_configure")
u32 proxy_on_configure(u32 root_id, size_t config_size) {
  (void)root_id;
  u8 *cfg;
  size_t cfg_len;
  if (pw_plugin_config(config_size, &cfg, &cfg_len) != PW_OK) {
    pw_log(PW_LOG_ERROR, "body_rewrite: cannot read the plugin configuration");
    return 0;
  }
  char *f, *t;
  size_t fl, tl;
  int ff = pw_json_string(cfg, cfg_len, "from", &f, &fl);
  int tf = pw_json_string(cfg, cfg_len, "to", &t, &tl);
  pw_free(cfg);
  if (ff != 1 || fl == 0 || tf != 1) {
    pw_free(f);
    pw_free(t);
    pw_log(PW_LOG_ERROR,
           "body_rewrite: the configuration needs strings \"from\" (not "
           "empty) and \"to\"");
    return 0;
  }
  pw_free(from);
  pw_free(to);
  from = f;
  from_len = fl;
  to = t;
  to_len = tl;
  return 1;
}

PW_EXPORT("proxy_on_response_headers")
u32 proxy_on_response_headers(u32 ctx, size_t num_headers, u32 end_of_stream) {
  (void)ctx;
  (void)num_headers;
  (void)end_of_stream;
  proxy_remove_header_map_value(PW_MAP_HTTP_RESPONSE_HEADERS, "content-length",
                                sizeof("content-length") - 1);
  return PW_CONTINUE;
}

static size_t count_matches(const u8 *s, size_t n) {
  size_t count = 0;
  for (size_t i = 0; i + from_len <= n;) {
    if (memcmp(s + i, from, from_len) == 0) {
      count++;
      i += from_len;
    } else {
      i++;
    }
  }
  return count;
}

PW_EXPORT("proxy_on_response_body")
u32 proxy_on_response_body(u32 ctx, size_t body_size, u32 end_of_stream) {
  (void)ctx;
  if (!end_of_stream) return PW_PAUSE;
  if (!from || body_size == 0) return PW_CONTINUE;

  u8 *body;
  size_t len;
  if (pw_get_buffer(PW_BUFFER_HTTP_RESPONSE_BODY, 0, body_size, &body, &len) !=
      PW_OK) {
    pw_log(PW_LOG_WARN, "body_rewrite: cannot read the response body");
    return PW_CONTINUE;
  }

  size_t count = count_matches(body, len);
  if (count == 0) {
    pw_free(body);
    return PW_CONTINUE;
  }

  size_t out_len = len - count * from_len + count * to_len;
  u8 *out = (u8 *)pw_alloc(out_len ? out_len : 1);
  if (!out) {
    pw_free(body);
    pw_log(PW_LOG_ERROR, "body_rewrite: out of memory");
    return PW_CONTINUE;
  }
  size_t o = 0;
  for (size_t i = 0; i < len;) {
    if (i + from_len <= len && memcmp(body + i, from, from_len) == 0) {
      memcpy(out + o, to, to_len);
      o += to_len;
      i += from_len;
    } else {
      out[o++] = body[i++];
    }
  }

  if (proxy_set_buffer_bytes(PW_BUFFER_HTTP_RESPONSE_BODY, 0, body_size, out,
                             out_len) != PW_OK)
    pw_log(PW_LOG_WARN, "body_rewrite: cannot replace the response body");
  pw_free(out);
  pw_free(body);
  return PW_CONTINUE;
}
