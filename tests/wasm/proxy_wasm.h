/*
 * proxy_wasm.h: the proxy-wasm ABI 0.2.1 as seen from a C plugin, for the
 * test plugins beside it.
 *
 * There is no libc: this header carries the host imports, the ABI constants,
 * the memory allocator the host calls (proxy_on_memory_allocate / malloc),
 * memcpy/memmove/memset/memcmp, and a few helpers (strings, header pairs, a flat JSON
 * lookup, decimal numbers).
 *
 * It defines functions and exports, so a plugin is one .c file that includes
 * it exactly once.
 *
 * Memory: every buffer the host hands back (through a `ret_ptr_ptr`) is
 * allocated by calling the module's proxy_on_memory_allocate and belongs to
 * the plugin, which gives it back with pw_free(). The allocator keeps one
 * free list per power-of-two size class, so an instance that frees what it
 * uses runs any number of requests in a bounded heap.
 */
#ifndef PROXY_WASM_H
#define PROXY_WASM_H

typedef unsigned char u8;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef __SIZE_TYPE__ size_t;
typedef __UINTPTR_TYPE__ uintptr_t;

#define NULL ((void *)0)

#define PW_EXPORT(name) __attribute__((export_name(name)))
#define PW_IMPORT(name) __attribute__((import_module("env"), import_name(name)))
/* Helpers a plugin may leave unused. */
#define PW_HELPER static __attribute__((unused))

/* ---------------------------------------------------------------- constants */

/* proxy_action_t */
#define PW_CONTINUE 0
#define PW_PAUSE 1

/* proxy_status_t (WasmResult) */
#define PW_OK 0
#define PW_NOT_FOUND 1
#define PW_BAD_ARGUMENT 2
#define PW_SERIALIZATION_FAILURE 3
#define PW_PARSE_FAILURE 4
#define PW_INVALID_MEMORY_ACCESS 6
#define PW_EMPTY 7
#define PW_CAS_MISMATCH 8
#define PW_INTERNAL_FAILURE 10
#define PW_UNIMPLEMENTED 12

/* proxy_map_type_t */
#define PW_MAP_HTTP_REQUEST_HEADERS 0
#define PW_MAP_HTTP_REQUEST_TRAILERS 1
#define PW_MAP_HTTP_RESPONSE_HEADERS 2
#define PW_MAP_HTTP_RESPONSE_TRAILERS 3
#define PW_MAP_HTTP_CALL_RESPONSE_HEADERS 6
#define PW_MAP_HTTP_CALL_RESPONSE_TRAILERS 7

/* proxy_buffer_type_t */
#define PW_BUFFER_HTTP_REQUEST_BODY 0
#define PW_BUFFER_HTTP_RESPONSE_BODY 1
#define PW_BUFFER_HTTP_CALL_RESPONSE_BODY 4
#define PW_BUFFER_VM_CONFIGURATION 6
#define PW_BUFFER_PLUGIN_CONFIGURATION 7

/* proxy_stream_type_t */
#define PW_STREAM_HTTP_REQUEST 0
#define PW_STREAM_HTTP_RESPONSE 1

/* proxy_log_level_t */
#define PW_LOG_TRACE 0
#define PW_LOG_DEBUG 1
#define PW_LOG_INFO 2
#define PW_LOG_WARN 3
#define PW_LOG_ERROR 4
#define PW_LOG_CRITICAL 5

/* ------------------------------------------------------------- host imports */
/* Only the imports a plugin actually calls end up in its module. */

PW_IMPORT("proxy_log")
u32 proxy_log(u32 level, const char *msg, size_t msg_size);

PW_IMPORT("proxy_get_buffer_bytes")
u32 proxy_get_buffer_bytes(u32 buffer_type, size_t start, size_t max_size,
                           u8 **ret_ptr, size_t *ret_size);

PW_IMPORT("proxy_set_buffer_bytes")
u32 proxy_set_buffer_bytes(u32 buffer_type, size_t start, size_t size,
                           const u8 *data, size_t data_size);

PW_IMPORT("proxy_get_header_map_value")
u32 proxy_get_header_map_value(u32 map, const char *key, size_t key_size,
                               u8 **ret_val, size_t *ret_val_size);

PW_IMPORT("proxy_add_header_map_value")
u32 proxy_add_header_map_value(u32 map, const char *key, size_t key_size,
                               const u8 *val, size_t val_size);

PW_IMPORT("proxy_replace_header_map_value")
u32 proxy_replace_header_map_value(u32 map, const char *key, size_t key_size,
                                   const u8 *val, size_t val_size);

PW_IMPORT("proxy_remove_header_map_value")
u32 proxy_remove_header_map_value(u32 map, const char *key, size_t key_size);

PW_IMPORT("proxy_get_header_map_pairs")
u32 proxy_get_header_map_pairs(u32 map, u8 **ret_ptr, size_t *ret_size);

PW_IMPORT("proxy_get_property")
u32 proxy_get_property(const char *path, size_t path_size, u8 **ret_ptr,
                       size_t *ret_size);

PW_IMPORT("proxy_send_local_response")
u32 proxy_send_local_response(u32 status_code, const char *details,
                              size_t details_size, const u8 *body,
                              size_t body_size, const u8 *headers,
                              size_t headers_size, i32 grpc_status);

PW_IMPORT("proxy_http_call")
u32 proxy_http_call(const char *upstream, size_t upstream_size,
                    const u8 *headers, size_t headers_size, const u8 *body,
                    size_t body_size, const u8 *trailers, size_t trailers_size,
                    u32 timeout_ms, u32 *ret_token);

PW_IMPORT("proxy_continue_stream")
u32 proxy_continue_stream(u32 stream_type);

PW_IMPORT("proxy_set_tick_period_milliseconds")
u32 proxy_set_tick_period_milliseconds(u32 period_ms);

PW_IMPORT("proxy_get_shared_data")
u32 proxy_get_shared_data(const char *key, size_t key_size, u8 **ret_val,
                          size_t *ret_val_size, u32 *ret_cas);

PW_IMPORT("proxy_set_shared_data")
u32 proxy_set_shared_data(const char *key, size_t key_size, const u8 *val,
                          size_t val_size, u32 cas);

/* ------------------------------------------------------- memory primitives */
/* clang lowers struct copies and some loops to calls of these, so they must
 * exist under their C names. Built with -ffreestanding, the loops below are
 * not turned back into calls to themselves. */

void *memcpy(void *dst, const void *src, size_t n) {
  u8 *d = (u8 *)dst;
  const u8 *s = (const u8 *)src;
  while (n--) *d++ = *s++;
  return dst;
}

void *memmove(void *dst, const void *src, size_t n) {
  u8 *d = (u8 *)dst;
  const u8 *s = (const u8 *)src;
  if (d == s || n == 0) return dst;
  if (d < s) {
    while (n--) *d++ = *s++;
  } else {
    d += n;
    s += n;
    while (n--) *--d = *--s;
  }
  return dst;
}

void *memset(void *dst, int c, size_t n) {
  u8 *d = (u8 *)dst;
  while (n--) *d++ = (u8)c;
  return dst;
}

int memcmp(const void *a, const void *b, size_t n) {
  const u8 *x = (const u8 *)a;
  const u8 *y = (const u8 *)b;
  for (; n; n--, x++, y++)
    if (*x != *y) return (int)*x - (int)*y;
  return 0;
}

/* ---------------------------------------------------------------- allocator */
/*
 * Size-class free lists. A block is 2^(class+4) bytes: an 8-byte header
 * (class, magic) and the payload the caller sees. Blocks come from a bump
 * pointer above __heap_base; memory grows with memory.grow when the bump
 * pointer reaches its end (growth beyond the host's limit makes the
 * allocation return 0). A freed block goes on its class's list and is the
 * next one handed out for that class; blocks are never split or merged.
 *
 * The heap is therefore bounded by, summed over the classes, the most blocks
 * of that class ever live at once times their size (each block less than
 * twice what was asked for), whatever the number of requests: a plugin that
 * frees what it uses stops growing once each class has seen its peak.
 */

extern u8 __heap_base; /* from wasm-ld: the first byte above stack and data */

#define PW_MIN_SHIFT 4u                 /* smallest block: 16 bytes */
#define PW_CLASSES 27u                  /* largest block: 2^30 bytes */
#define PW_HEADER 8u
#define PW_MAGIC_USED 0x55534544u
#define PW_MAGIC_FREE 0x46524545u
#define PW_PAGE 65536ull

struct pw_block {
  u32 cls;
  u32 magic;
};

static u8 *pw_free_list[PW_CLASSES];
static uintptr_t pw_heap_start;
static uintptr_t pw_brk;

PW_HELPER void *pw_alloc(size_t size) {
  u32 cls = 0;
  u64 block = 1ull << PW_MIN_SHIFT;
  u64 want = (u64)size + PW_HEADER;
  while (block < want) {
    block <<= 1;
    cls++;
    if (cls >= PW_CLASSES) return NULL;
  }

  u8 *p = pw_free_list[cls];
  if (p) {
    struct pw_block *h = (struct pw_block *)p;
    pw_free_list[cls] = *(u8 **)(p + PW_HEADER);
    h->magic = PW_MAGIC_USED;
    return p + PW_HEADER;
  }

  if (pw_brk == 0) {
    pw_heap_start = ((uintptr_t)&__heap_base + 7u) & ~(uintptr_t)7u;
    pw_brk = pw_heap_start;
  }
  u64 end = (u64)pw_brk + block;
  /* Ask the memory for its size each time: a plugin may grow memory itself. */
  u64 have = (u64)__builtin_wasm_memory_size(0) * PW_PAGE;
  if (end > have) {
    u64 pages = (end - have + PW_PAGE - 1) / PW_PAGE;
    if (end > 0xFFFFFFFFull) return NULL;
    if (__builtin_wasm_memory_grow(0, (size_t)pages) == (size_t)-1) return NULL;
  }
  p = (u8 *)pw_brk;
  pw_brk = (uintptr_t)end;
  struct pw_block *h = (struct pw_block *)p;
  h->cls = cls;
  h->magic = PW_MAGIC_USED;
  return p + PW_HEADER;
}

/* Gives a block back. Pointers that are not a live block of this allocator
 * (NULL, double frees, pointers into data) are ignored. */
PW_HELPER void pw_free(void *ptr) {
  uintptr_t a = (uintptr_t)ptr;
  if (a == 0 || pw_brk == 0) return;
  if (a < pw_heap_start + PW_HEADER || a >= pw_brk || (a & 7u)) return;
  struct pw_block *h = (struct pw_block *)(a - PW_HEADER);
  if (h->magic != PW_MAGIC_USED || h->cls >= PW_CLASSES) return;
  h->magic = PW_MAGIC_FREE;
  *(u8 **)ptr = pw_free_list[h->cls];
  pw_free_list[h->cls] = (u8 *)h;
}

PW_EXPORT("proxy_on_memory_allocate")
void *proxy_on_memory_allocate(size_t size) { return pw_alloc(size); }

PW_EXPORT("malloc")
void *pw_export_malloc(size_t size) { return pw_alloc(size); }

PW_EXPORT("proxy_abi_version_0_2_1")
void proxy_abi_version_0_2_1(void) {}

/* ------------------------------------------------------------------ strings */

PW_HELPER size_t pw_strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}

PW_HELPER int pw_eq(const u8 *a, size_t an, const char *b) {
  size_t bn = pw_strlen(b);
  return an == bn && memcmp(a, b, an) == 0;
}

/* A NUL-terminated copy of (s, n) in allocated memory; NULL when out of it. */
PW_HELPER char *pw_strndup(const u8 *s, size_t n) {
  char *d = (char *)pw_alloc(n + 1);
  if (!d) return NULL;
  memcpy(d, s, n);
  d[n] = 0;
  return d;
}

PW_HELPER void pw_lowercase(char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] >= 'A' && s[i] <= 'Z') s[i] = (char)(s[i] - 'A' + 'a');
}

/* Writes v in decimal into buf (at least 10 bytes), returns its length. */
PW_HELPER size_t pw_utoa(u32 v, char *buf) {
  char tmp[10];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  for (size_t i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
  return n;
}

/* The decimal number at the start of (s, n); 0 when there is none. */
PW_HELPER u32 pw_atou(const u8 *s, size_t n) {
  u32 v = 0;
  for (size_t i = 0; i < n && s[i] >= '0' && s[i] <= '9'; i++)
    v = v * 10 + (u32)(s[i] - '0');
  return v;
}

PW_HELPER void pw_log(u32 level, const char *msg) {
  proxy_log(level, msg, pw_strlen(msg));
}

/* ------------------------------------------------------- host call helpers */
/*
 * Each helper zeroes the returned pointer before the call: if the host
 * allocated a buffer but still reported a failure, that buffer is freed here
 * rather than leaked. On PW_OK the caller owns *val and frees it with
 * pw_free (it may be NULL when the value is empty).
 */

PW_HELPER u32 pw_get_header(u32 map, const char *key, u8 **val,
                            size_t *len) {
  *val = NULL;
  *len = 0;
  u32 st = proxy_get_header_map_value(map, key, pw_strlen(key), val, len);
  if (st != PW_OK) {
    pw_free(*val);
    *val = NULL;
    *len = 0;
  }
  return st;
}

PW_HELPER u32 pw_get_buffer(u32 buffer_type, size_t start, size_t max,
                            u8 **data, size_t *len) {
  *data = NULL;
  *len = 0;
  u32 st = proxy_get_buffer_bytes(buffer_type, start, max, data, len);
  if (st != PW_OK) {
    pw_free(*data);
    *data = NULL;
    *len = 0;
  }
  return st;
}

/* path is the property path with its segments joined by NUL bytes, and
 * path_size counts them (no trailing NUL): "request\0path" is 12 bytes. */
PW_HELPER u32 pw_get_property(const char *path, size_t path_size, u8 **val,
                              size_t *len) {
  *val = NULL;
  *len = 0;
  u32 st = proxy_get_property(path, path_size, val, len);
  if (st != PW_OK) {
    pw_free(*val);
    *val = NULL;
    *len = 0;
  }
  return st;
}

PW_HELPER u32 pw_get_shared(const char *key, u8 **val, size_t *len,
                            u32 *cas) {
  *val = NULL;
  *len = 0;
  *cas = 0;
  u32 st = proxy_get_shared_data(key, pw_strlen(key), val, len, cas);
  if (st != PW_OK) {
    pw_free(*val);
    *val = NULL;
    *len = 0;
  }
  return st;
}

/* ------------------------------------------------------------ header pairs */
/*
 * Serialized map: u32 count, count x (u32 key_len, u32 value_len), then for
 * each pair its key, a NUL, its value, a NUL. All integers little endian
 * (wasm memory is little endian, so plain u32 stores are right).
 */

struct pw_pair {
  const char *key;
  size_t key_len;
  const char *val;
  size_t val_len;
};

/* A serialized copy of pairs[0..n) in allocated memory (free it with
 * pw_free); NULL when out of memory. */
PW_HELPER u8 *pw_serialize_pairs(const struct pw_pair *pairs, size_t n,
                                 size_t *out_len) {
  size_t len = 4 + 8 * n;
  for (size_t i = 0; i < n; i++)
    len += pairs[i].key_len + 1 + pairs[i].val_len + 1;
  u8 *buf = (u8 *)pw_alloc(len);
  if (!buf) return NULL;
  u32 *sizes = (u32 *)buf;
  sizes[0] = (u32)n;
  u8 *p = buf + 4 + 8 * n;
  for (size_t i = 0; i < n; i++) {
    sizes[1 + 2 * i] = (u32)pairs[i].key_len;
    sizes[2 + 2 * i] = (u32)pairs[i].val_len;
    memcpy(p, pairs[i].key, pairs[i].key_len);
    p += pairs[i].key_len;
    *p++ = 0;
    memcpy(p, pairs[i].val, pairs[i].val_len);
    p += pairs[i].val_len;
    *p++ = 0;
  }
  *out_len = len;
  return buf;
}

#define PW_PAIR(k, v) \
  { (k), sizeof(k) - 1, (v), sizeof(v) - 1 }

/* Sends a local response with a literal body and the given header pairs. */
PW_HELPER u32 pw_local_response(u32 status, const char *details,
                                const char *body, const struct pw_pair *pairs,
                                size_t npairs) {
  size_t hlen = 0;
  u8 *h = pw_serialize_pairs(pairs, npairs, &hlen);
  if (!h) hlen = 0;
  u32 st = proxy_send_local_response(status, details, pw_strlen(details),
                                     (const u8 *)body, pw_strlen(body), h, hlen,
                                     -1);
  pw_free(h);
  return st;
}

/* ------------------------------------------------------------- flat JSON */
/*
 * pw_json_string(json, n, key, &out, &out_len) looks for the member `key`
 * of the top-level object and, when its value is a string, stores an
 * unescaped, NUL-terminated copy in *out (free it with pw_free).
 *
 * Returns 1 when found, 0 when the key is absent or not a string, -1 when
 * the text is not a JSON object (or memory ran out). Values of other types
 * (numbers, booleans, nested objects and arrays) are skipped. An empty or
 * all-blank text counts as an empty object.
 */

PW_HELPER size_t pw_json_ws(const u8 *s, size_t n, size_t i) {
  while (i < n &&
         (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
    i++;
  return i;
}

/* s[i] is the opening quote; returns the index after the closing quote, or
 * 0 when the string is not terminated. */
PW_HELPER size_t pw_json_skip_string(const u8 *s, size_t n, size_t i) {
  for (i++; i < n; i++) {
    if (s[i] == '\\') {
      i++;
    } else if (s[i] == '"') {
      return i + 1;
    }
  }
  return 0;
}

/* Skips any value at s[i]; returns the index after it, 0 on malformed text. */
PW_HELPER size_t pw_json_skip_value(const u8 *s, size_t n, size_t i) {
  if (i >= n) return 0;
  if (s[i] == '"') return pw_json_skip_string(s, n, i);
  if (s[i] == '{' || s[i] == '[') {
    size_t depth = 0;
    while (i < n) {
      u8 c = s[i];
      if (c == '"') {
        i = pw_json_skip_string(s, n, i);
        if (!i) return 0;
        continue;
      }
      if (c == '{' || c == '[') depth++;
      if (c == '}' || c == ']') {
        depth--;
        if (depth == 0) return i + 1;
      }
      i++;
    }
    return 0;
  }
  size_t start = i;
  while (i < n && s[i] != ',' && s[i] != '}' && s[i] != ']' && s[i] != ' ' &&
         s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
    i++;
  return i > start ? i : 0;
}

PW_HELPER int pw_hex(u8 c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Unescapes the JSON string body s[a..b) into a fresh buffer. */
PW_HELPER char *pw_json_unescape(const u8 *s, size_t a, size_t b,
                                 size_t *out_len) {
  char *d = (char *)pw_alloc(b - a + 1); /* unescaping never lengthens */
  if (!d) return NULL;
  size_t o = 0;
  for (size_t i = a; i < b; i++) {
    u8 c = s[i];
    if (c != '\\' || i + 1 >= b) {
      d[o++] = (char)c;
      continue;
    }
    c = s[++i];
    switch (c) {
      case 'n': d[o++] = '\n'; break;
      case 't': d[o++] = '\t'; break;
      case 'r': d[o++] = '\r'; break;
      case 'b': d[o++] = '\b'; break;
      case 'f': d[o++] = '\f'; break;
      case 'u': {
        u32 cp = 0;
        int ok = i + 4 < b;
        for (size_t k = 1; ok && k <= 4; k++) {
          int h = pw_hex(s[i + k]);
          if (h < 0) ok = 0;
          cp = cp * 16 + (u32)(h < 0 ? 0 : h);
        }
        if (!ok) { d[o++] = 'u'; break; }
        i += 4;
        /* \uXXXX is 6 bytes of input and at most 3 of UTF-8 output;
         * surrogate halves are written as they come. */
        if (cp < 0x80) {
          d[o++] = (char)cp;
        } else if (cp < 0x800) {
          d[o++] = (char)(0xC0 | (cp >> 6));
          d[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
          d[o++] = (char)(0xE0 | (cp >> 12));
          d[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
          d[o++] = (char)(0x80 | (cp & 0x3F));
        }
        break;
      }
      default: d[o++] = (char)c; break; /* \" \\ \/ and anything else */
    }
  }
  d[o] = 0;
  *out_len = o;
  return d;
}

PW_HELPER int pw_json_string(const u8 *s, size_t n, const char *key,
                             char **out, size_t *out_len) {
  *out = NULL;
  *out_len = 0;
  size_t i = pw_json_ws(s, n, 0);
  if (i == n) return 0; /* empty configuration: an empty object */
  if (s[i] != '{') return -1;
  i = pw_json_ws(s, n, i + 1);
  if (i < n && s[i] == '}') return 0;
  size_t klen = pw_strlen(key);
  while (i < n) {
    if (s[i] != '"') return -1;
    size_t kend = pw_json_skip_string(s, n, i);
    if (!kend) return -1;
    /* The raw key is s[i+1 .. kend-1); keys with escapes never match. */
    int match = (kend - i - 2 == klen) && memcmp(s + i + 1, key, klen) == 0;
    i = pw_json_ws(s, n, kend);
    if (i >= n || s[i] != ':') return -1;
    i = pw_json_ws(s, n, i + 1);
    if (i >= n) return -1;
    size_t vstart = i;
    size_t vend = pw_json_skip_value(s, n, i);
    if (!vend) return -1;
    if (match) {
      if (s[vstart] != '"') return 0;
      *out = pw_json_unescape(s, vstart + 1, vend - 1, out_len);
      return *out ? 1 : -1;
    }
    i = pw_json_ws(s, n, vend);
    if (i >= n) return -1;
    if (s[i] == '}') return 0;
    if (s[i] != ',') return -1;
    i = pw_json_ws(s, n, i + 1);
  }
  return -1;
}

/* Reads the plugin configuration (in proxy_on_configure). On PW_OK the
 * caller frees *data; a zero-size configuration gives PW_OK with no data. */
PW_HELPER u32 pw_plugin_config(size_t size, u8 **data, size_t *len) {
  *data = NULL;
  *len = 0;
  if (size == 0) return PW_OK;
  return pw_get_buffer(PW_BUFFER_PLUGIN_CONFIGURATION, 0, size, data, len);
}

#endif /* PROXY_WASM_H */
