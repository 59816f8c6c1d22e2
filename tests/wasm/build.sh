#!/bin/sh
# Rebuilds every test plugin (*.c -> *.wasm beside it) and checks that each
# module has the exports, imports and signatures of proxy-wasm ABI 0.2.1.
#
#   tests/wasm/build.sh            build and check all plugins
#   tests/wasm/build.sh deny spin  build and check some of them
#
# Needs clang and wasm-ld (Debian/Ubuntu: apt-get install clang lld), and
# python3 or llvm-objdump for the check. CC may name another clang.
set -eu

cd "$(dirname "$0")"

CC=${CC:-clang}
if ! command -v "$CC" >/dev/null 2>&1; then
    echo "build.sh: $CC not found; install it with: apt-get install clang lld" >&2
    exit 1
fi
if ! command -v wasm-ld >/dev/null 2>&1; then
    echo "build.sh: wasm-ld not found; install it with: apt-get install clang lld" >&2
    exit 1
fi

CFLAGS="--target=wasm32 -mcpu=mvp -O2 -ffreestanding -nostdlib -fvisibility=hidden -Wall -Wextra"
LDFLAGS="-Wl,--no-entry -Wl,--strip-debug -Wl,--stack-first -Wl,-z,stack-size=65536"

# The callbacks each plugin must export, beside memory,
# proxy_abi_version_0_2_1, proxy_on_memory_allocate and malloc.
callbacks() {
    case $1 in
    add_header) echo proxy_on_configure proxy_on_request_headers ;;
    deny) echo proxy_on_configure proxy_on_request_headers ;;
    body_rewrite) echo proxy_on_configure proxy_on_response_headers proxy_on_response_body ;;
    http_call) echo proxy_on_configure proxy_on_request_headers proxy_on_http_call_response proxy_on_done proxy_on_delete ;;
    spin) echo proxy_on_request_headers ;;
    hog) echo proxy_on_request_headers ;;
    ticker) echo proxy_on_vm_start proxy_on_configure proxy_on_tick proxy_on_request_headers ;;
    *) echo "build.sh: no export list for plugin '$1'; add it to callbacks() in build.sh" >&2; return 1 ;;
    esac
}

if [ $# -gt 0 ]; then
    plugins=$*
else
    plugins=$(for f in *.c; do basename "$f" .c; done)
fi

check_python() {
    python3 - "$@" <<'PY'
import sys

I = 0x7F  # i32
# name: (number of i32 params, number of i32 results)
EXPORTS = {
    "proxy_abi_version_0_2_1": (0, 0),
    "proxy_on_memory_allocate": (1, 1),
    "malloc": (1, 1),
    "proxy_on_context_create": (2, 0),
    "proxy_on_vm_start": (2, 1),
    "proxy_on_configure": (2, 1),
    "proxy_on_tick": (1, 0),
    "proxy_on_request_headers": (3, 1),
    "proxy_on_request_body": (3, 1),
    "proxy_on_response_headers": (3, 1),
    "proxy_on_response_body": (3, 1),
    "proxy_on_http_call_response": (5, 0),
    "proxy_on_done": (1, 1),
    "proxy_on_log": (1, 0),
    "proxy_on_delete": (1, 0),
}
IMPORTS = {
    "proxy_log": 3,
    "proxy_get_buffer_bytes": 5,
    "proxy_set_buffer_bytes": 5,
    "proxy_get_header_map_value": 5,
    "proxy_add_header_map_value": 5,
    "proxy_replace_header_map_value": 5,
    "proxy_remove_header_map_value": 3,
    "proxy_get_header_map_pairs": 3,
    "proxy_get_property": 4,
    "proxy_send_local_response": 8,
    "proxy_http_call": 10,
    "proxy_continue_stream": 1,
    "proxy_set_tick_period_milliseconds": 1,
    "proxy_get_shared_data": 5,
    "proxy_set_shared_data": 5,
}

def leb(b, i):
    v = s = 0
    while True:
        x = b[i]; i += 1
        v |= (x & 0x7F) << s; s += 7
        if x < 0x80:
            return v, i

def name(b, i):
    n, i = leb(b, i)
    return b[i:i + n].decode(), i + n

def parse(path):
    b = open(path, "rb").read()
    if b[:8] != b"\0asm\1\0\0\0":
        raise SystemExit(f"{path}: not a wasm module")
    types, imports, funcs, exports = [], [], [], []
    i = 8
    while i < len(b):
        sid = b[i]; size, i = leb(b, i + 1); end = i + size
        if sid == 1:
            n, i = leb(b, i)
            for _ in range(n):
                assert b[i] == 0x60; i += 1
                np, i = leb(b, i); p = list(b[i:i + np]); i += np
                nr, i = leb(b, i); r = list(b[i:i + nr]); i += nr
                types.append((p, r))
        elif sid == 2:
            n, i = leb(b, i)
            for _ in range(n):
                mod, i = name(b, i); nm, i = name(b, i)
                kind = b[i]; i += 1
                if kind == 0:
                    t, i = leb(b, i)
                    imports.append((mod, nm, "func", t))
                else:
                    imports.append((mod, nm, "kind%d" % kind, None))
                    break  # non-function imports are refused below anyway
        elif sid == 3:
            n, i = leb(b, i)
            for _ in range(n):
                t, i = leb(b, i); funcs.append(t)
        elif sid == 7:
            n, i = leb(b, i)
            for _ in range(n):
                nm, i = name(b, i); kind = b[i]; idx, i = leb(b, i + 1)
                exports.append((nm, kind, idx))
        i = end
    return b, types, imports, funcs, exports

def sig(t):
    p, r = t
    if any(x != I for x in p + r):
        return None
    return (len(p), len(r))

errors = 0
for arg in sys.argv[1:]:
    path, wanted = arg.split("=", 1)
    b, types, imports, funcs, exports = parse(path)
    errs = []
    fimports = [x for x in imports if x[2] == "func"]
    for mod, nm, kind, t in imports:
        if mod != "env" or not nm.startswith("proxy_"):
            errs.append(f"imports {mod}.{nm}: only env.proxy_* may be imported")
        elif kind != "func":
            errs.append(f"imports {mod}.{nm} as a {kind}, not a function")
        elif nm not in IMPORTS:
            errs.append(f"imports env.{nm}, which the host does not provide")
        elif sig(types[t]) != (IMPORTS[nm], 1):
            errs.append(f"imports env.{nm} with the wrong signature {types[t]}")
    names = {nm: (kind, idx) for nm, kind, idx in exports}
    if names.get("memory", (None,))[0] != 2:
        errs.append("does not export its memory as `memory`")
    required = ["proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "malloc"] + wanted.split()
    for nm in required:
        if nm not in names:
            errs.append(f"does not export {nm}")
    for nm, (kind, idx) in names.items():
        if nm == "memory":
            continue
        if kind != 0:
            errs.append(f"exports {nm}, which is not a function")
            continue
        if nm not in EXPORTS:
            errs.append(f"exports {nm}, which is no proxy-wasm callback")
            continue
        t = types[funcs[idx - len(fimports)]] if idx >= len(fimports) else None
        if t is None or sig(t) != EXPORTS[nm]:
            errs.append(f"exports {nm} with the wrong signature {t}")
    base = path.rsplit("/", 1)[-1]
    if errs:
        errors += 1
        for e in errs:
            print(f"{base}: {e}", file=sys.stderr)
    else:
        ex = sorted(n for n in names if n not in ("memory", "proxy_abi_version_0_2_1", "proxy_on_memory_allocate", "malloc"))
        im = sorted(nm for _, nm, _, _ in imports)
        print(f"{base}: ok, {len(b)} bytes")
        print(f"  exports: memory proxy_abi_version_0_2_1 proxy_on_memory_allocate malloc {' '.join(ex)}")
        print(f"  imports: {' '.join(im)}")
sys.exit(1 if errors else 0)
PY
}

# Without python3: the export and import sections, dumped by llvm-objdump and
# decoded by awk. Checks names and import modules, not signatures.
section_names() { # file section -> one "kind name" or "kind module.name" a line
    llvm-objdump -s -j "$2" "$1" | awk -v sec="$2" '
        BEGIN { for (i = 0; i < 16; i++) hex[substr("0123456789abcdef", i + 1, 1)] = i }
        /^ [0-9a-f][0-9a-f][0-9a-f][0-9a-f] / {
            h = substr($0, 7, 35); gsub(/ /, "", h)
            for (i = 1; i < length(h); i += 2)
                b[n++] = hex[substr(h, i, 1)] * 16 + hex[substr(h, i + 1, 1)]
        }
        function leb(   v, m, x) { v = 0; m = 1
            do { x = b[p++]; v += (x % 128) * m; m *= 128 } while (x >= 128)
            return v }
        function str(   l, s, k) { l = leb(); s = ""
            for (k = 0; k < l; k++) s = s sprintf("%c", b[p++])
            return s }
        END {
            p = 0; count = leb()
            for (e = 0; e < count; e++) {
                if (sec == "IMPORT") { mod = str(); nm = str(); kind = b[p++]
                    if (kind != 0) { print "kind" kind " " mod "." nm; exit }
                    leb(); print "func " mod "." nm
                } else { nm = str(); kind = b[p++]; leb(); print "kind" kind " " nm }
            }
        }'
}

check_objdump() {
    failed=0
    for arg in "$@"; do
        wasm=${arg%%=*}
        wanted=${arg#*=}
        errs=0
        exports=$(section_names "$wasm" EXPORT)
        imports=$(section_names "$wasm" IMPORT)
        printf '%s\n' "$exports" | grep -qx "kind2 memory" ||
            { echo "$wasm: does not export its memory as \`memory\`" >&2; errs=1; }
        for e in proxy_abi_version_0_2_1 proxy_on_memory_allocate malloc $wanted; do
            printf '%s\n' "$exports" | grep -qx "kind0 $e" ||
                { echo "$wasm: does not export $e" >&2; errs=1; }
        done
        bad=$(printf '%s\n' "$exports" | grep -v '^kind2 memory$' | grep -v '^kind0 malloc$' | grep -v '^kind0 proxy_' || true)
        [ -z "$bad" ] || { echo "$wasm: exports more than memory, malloc and proxy_*: $bad" >&2; errs=1; }
        bad=$(printf '%s\n' "$imports" | grep -v '^$' | grep -v '^func env\.proxy_' || true)
        [ -z "$bad" ] || { echo "$wasm: imports other than env.proxy_* functions: $bad" >&2; errs=1; }
        if [ $errs -eq 0 ]; then
            echo "$wasm: ok (names checked; signatures need python3)"
            echo "  exports: $(printf '%s\n' "$exports" | sed 's/^kind[0-9]* //' | tr '\n' ' ')"
            echo "  imports: $(printf '%s\n' "$imports" | sed 's/^func env\.//' | tr '\n' ' ')"
        else
            failed=1
        fi
    done
    return $failed
}

# Each check argument is "file.wasm=callback callback ...".
set --
for p in $plugins; do
    if [ ! -f "$p.c" ]; then
        echo "build.sh: no $p.c here" >&2
        exit 1
    fi
    wanted=$(callbacks "$p")
    echo "building $p.wasm"
    # shellcheck disable=SC2086
    "$CC" $CFLAGS $LDFLAGS -o "$p.wasm" "$p.c"
    set -- "$@" "$p.wasm=$wanted"
done

if command -v python3 >/dev/null 2>&1; then
    check_python "$@"
elif command -v llvm-objdump >/dev/null 2>&1; then
    check_objdump "$@"
else
    echo "build.sh: neither python3 nor llvm-objdump found; the modules are built but not checked" >&2
    exit 1
fi
