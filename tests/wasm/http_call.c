/*
 * http_call: asks a checker service before letting a request through.
 *
 * Configuration: {"upstream": "127.0.0.1:PORT", "path": "/check"}
 *   upstream  required: the "host:port" given to proxy_http_call.
 *   path      optional, "/check" when absent.
 *
 * proxy_on_request_headers dispatches GET <path> to the upstream with
 * :authority "checker" and, when the request has one, its authorization
 * header; timeout 2000 ms, no body, no trailers. It returns Pause. When the
 * dispatch itself fails the request gets a local 503 "call failed\n".
 *
 * proxy_on_http_call_response: when the call answered :status 200 the
 * request gets the header x-checked set to the call's body (one trailing
 * newline removed) and is resumed with proxy_continue_stream(HttpRequest);
 * any other answer, or no answer, gets a local 403 "denied by checker\n"
 * and the request is not resumed.
 *
 * The plugin remembers which context waits for which call, so an answer for
 * a context that is already gone (or a token it never got) is ignored;
 * proxy_on_delete forgets the context.
 */
#include "proxy_wasm.h"

static char *upstream;
static size_t upstream_len;
static char *path;
static size_t path_len;

PW_EXPORT("proxy_on_configure")
u32 proxy_on_configure(u32 root_id, size_t config_size) {
  (void)root_id;
  u8 *cfg;
  size_t cfg_len;
  if (pw_plugin_config(config_size, &cfg, &cfg_len) != PW_OK) {
    pw_log(PW_LOG_ERROR, "http_call: cannot read the plugin configuration");
    return 0;
  }
  char *u, *p;
  size_t ul, pl;
  int uf = pw_json_string(cfg, cfg_len, "upstream", &u, &ul);
  int pf = pw_json_string(cfg, cfg_len, "path", &p, &pl);
  pw_free(cfg);
  if (uf != 1 || ul == 0 || pf < 0 || (pf == 1 && pl == 0)) {
    pw_free(u);
    pw_free(p);
    pw_log(PW_LOG_ERROR,
           "http_call: the configuration needs a string \"upstream\" "
           "(host:port)");
    return 0;
  }
  if (pf == 0) {
    p = pw_strndup((const u8 *)"/check", 6);
    pl = 6;
    if (!p) {
      pw_free(u);
      return 0;
    }
  }
  pw_free(upstream);
  pw_free(path);
  upstream = u;
  upstream_len = ul;
  path = p;
  path_len = pl;
  return 1;
}

/* ------------------------------------------------ pending calls, by context */

struct pending {
  u32 ctx;
  u32 token;
};

static struct pending *pending;
static size_t pending_len;
static size_t pending_cap;

static int pending_add(u32 ctx, u32 token) {
  if (pending_len == pending_cap) {
    size_t cap = pending_cap ? pending_cap * 2 : 16;
    struct pending *p = (struct pending *)pw_alloc(cap * sizeof *p);
    if (!p) return 0;
    memcpy(p, pending, pending_len * sizeof *p);
    pw_free(pending);
    pending = p;
    pending_cap = cap;
  }
  pending[pending_len].ctx = ctx;
  pending[pending_len].token = token;
  pending_len++;
  return 1;
}

/* Removes the entry of ctx (and of token, unless any_token); 1 if there was
 * one. */
static int pending_take(u32 ctx, u32 token, int any_token) {
  for (size_t i = 0; i < pending_len; i++) {
    if (pending[i].ctx == ctx && (any_token || pending[i].token == token)) {
      pending[i] = pending[--pending_len];
      return 1;
    }
  }
  return 0;
}

/* ------------------------------------------------------------------ request */

static const struct pw_pair text_plain[] = {
    PW_PAIR("content-type", "text/plain"),
};

PW_EXPORT("proxy_on_request_headers")
u32 proxy_on_request_headers(u32 ctx, size_t num_headers, u32 end_of_stream) {
  (void)num_headers;
  (void)end_of_stream;
  if (!upstream) return PW_CONTINUE;

  u8 *auth;
  size_t auth_len;
  int has_auth = pw_get_header(PW_MAP_HTTP_REQUEST_HEADERS, "authorization",
                               &auth, &auth_len) == PW_OK;

  struct pw_pair pairs[4] = {
      PW_PAIR(":method", "GET"),
      {":path", 5, path, path_len},
      PW_PAIR(":authority", "checker"),
      {"authorization", 13, (const char *)auth, auth_len},
  };
  size_t hlen;
  u8 *headers = pw_serialize_pairs(pairs, has_auth ? 4 : 3, &hlen);
  pw_free(auth);

  u32 token = 0;
  u32 st = PW_INTERNAL_FAILURE;
  if (headers) {
    st = proxy_http_call(upstream, upstream_len, headers, hlen, NULL, 0, NULL,
                         0, 2000, &token);
    pw_free(headers);
  }
  if (st != PW_OK || !pending_add(ctx, token)) {
    pw_log(PW_LOG_WARN, "http_call: dispatch failed");
    pw_local_response(503, "call_failed", "call failed\n", text_plain, 1);
    return PW_PAUSE;
  }
  return PW_PAUSE;
}

PW_EXPORT("proxy_on_http_call_response")
void proxy_on_http_call_response(u32 ctx, u32 token, size_t num_headers,
                                 size_t body_size, size_t num_trailers) {
  (void)num_headers;
  (void)num_trailers;
  if (!pending_take(ctx, token, 0)) {
    pw_log(PW_LOG_WARN, "http_call: answer for no pending call, ignored");
    return;
  }

  u8 *status;
  size_t status_len;
  int ok = pw_get_header(PW_MAP_HTTP_CALL_RESPONSE_HEADERS, ":status", &status,
                         &status_len) == PW_OK &&
           pw_eq(status, status_len, "200");
  pw_free(status);

  if (!ok) {
    pw_local_response(403, "denied_by_checker", "denied by checker\n",
                      text_plain, 1);
    return;
  }

  u8 *body = NULL;
  size_t body_len = 0;
  if (body_size > 0 &&
      pw_get_buffer(PW_BUFFER_HTTP_CALL_RESPONSE_BODY, 0, body_size, &body,
                    &body_len) != PW_OK)
    body_len = 0;
  if (body_len > 0 && body[body_len - 1] == '\n') {
    body_len--;
    if (body_len > 0 && body[body_len - 1] == '\r') body_len--;
  }
  proxy_replace_header_map_value(PW_MAP_HTTP_REQUEST_HEADERS, "x-checked", 9,
                                 body_len ? body : (const u8 *)"", body_len);
  pw_free(body);
  proxy_continue_stream(PW_STREAM_HTTP_REQUEST);
}

PW_EXPORT("proxy_on_done")
u32 proxy_on_done(u32 ctx) {
  (void)ctx;
  return 1;
}

PW_EXPORT("proxy_on_delete")
void proxy_on_delete(u32 ctx) {
  pending_take(ctx, 0, 1);
}
