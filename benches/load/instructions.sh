#!/usr/bin/env bash
# Instructions per request, from callgrind: repeatable where wall-clock CPU time on a shared
# machine is not (runs of the load comparison vary by ±20 %; these vary by well under 1 %).
#
# Each proxy runs under `valgrind --tool=callgrind` with one worker thread, in front of an
# nginx upstream (`return 200 ok`). After a warm-up (connections, pools, caches), the
# counters are zeroed, wrk sends a fixed stretch of keep-alive traffic, the counters are
# dumped, and the user-space instructions executed in that window are divided by the
# requests served. Kernel time (syscalls, TCP) is not counted: this measures what the
# proxy's own code costs, which is what optimisations of that code change.
#
# Cases: pingap (when installed), bare (examples/bare_proxy.rs), bare-grpc (the same taking
# unary gRPC calls over h2c to the h2c upstream: the grpc case's floor), contract (the same doing SPEC §4's per-request
# headers and timeouts), gatehouse (a plain route), full (RS256 JWT + rate limit + weighted
# split + header rewrite), plugged (a plain route with cors + ip_restriction +
# request_size_limit; requests carry an allowed Origin), wasm (a plain route with the
# proxy-wasm plugin tests/wasm/add_header.wasm: gatehouse is its baseline), grpc (unary
# gRPC calls over h2c, driven by h2load, through a `scheme: grpc` upstream: gatehouse is its
# baseline), lanes (the plain route to an upstream with `lanes`: gatehouse is its baseline),
# mirrored (the plain route copying 10 % of requests to another nginx server with the mirror
# plugin: gatehouse is its baseline), protected (the plain route to an upstream with a
# slow-call breaker, an adaptive concurrency limit and a retry budget: gatehouse is its
# baseline), transcode (REST calls `GET /v1/users/7` made gRPC calls by `grpc_transcode`, to
# the Python server of tests/grpc/transcode/server.py: gatehouse is its baseline), limited (the
# plain route with a local rate limit that never refuses), shared (the same limit with
# `scope: cluster`, one step in a local redis-server per request: limited is its baseline),
# origin (the plain route with the
# same requests: plugged's baseline), many (a plain route among 10,000 routes), traced (every span
# exported over OTLP/HTTP to a local sink), logged (traced, and the JSON access log to a file).
#
# Needs: valgrind, nginx (nginx-light), wrk, h2load (nghttp2-client), python3, openssl,
# redis-server (for shared).
# Usage: benches/load/instructions.sh [case...]   (default: all; SECONDS_PER_CASE=4,
#        PROFILE=release)
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/load/cases.sh
PORT_WAIT_TRIES=1200

SECONDS_PER_CASE=${SECONDS_PER_CASE:-4}
CONNECTIONS=${CONNECTIONS:-8}
cases=("$@")
[ ${#cases[@]} -eq 0 ] && cases=(pingap bare contract gatehouse origin full plugged wasm lanes mirrored protected limited shared bare-grpc grpc transcode many traced logged)
for tool in valgrind callgrind_control nginx wrk h2load python3 openssl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install valgrind nginx-light wrk nghttp2-client python3 openssl)" >&2; exit 1; }
done

# PROFILE picks the cargo profile to measure (release by default).
profile=${PROFILE:-release}
cargo build --profile "$profile" --quiet --bin gatehouse --example bare_proxy --example mint_tokens
bin=target/$profile
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT


up=$(free_port); otlp=$(free_port); grpcup=$(free_port); mirrorup=$(free_port)
cat > "$work/up.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/nginx-error.log warn; pid $work/nginx.pid;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;
  server { listen 127.0.0.1:$up; keepalive_requests 1000000; location / { return 200 'ok'; } }
  server { listen 127.0.0.1:$mirrorup; keepalive_requests 1000000; location / { return 200 'shadow'; } }
  server { listen 127.0.0.1:$otlp; keepalive_requests 1000000; client_max_body_size 64m; location / { return 200; } }
  server { listen 127.0.0.1:$grpcup http2; keepalive_requests 1000000; location / { default_type application/grpc; add_trailer grpc-status 0 always; return 200 'ok'; } } }
CONF
nginx -c "$work/up.conf" -p "$work" & pids+=($!)
wait_port "$up"
# The transcoding case's gRPC server (it stops when its standard input closes) and the
# descriptor set of its service.
tcup=0
if [[ " ${cases[*]} " == *" transcode "* ]]; then
  python3 tests/grpc/transcode/server.py --descriptors "$work/users.pb"
  mkfifo "$work/tcin"
  python3 tests/grpc/transcode/server.py < "$work/tcin" > "$work/tcup" & pids+=($!)
  exec 7>"$work/tcin"  # held open until this script ends
  for _ in $(seq 1 200); do grep -q PORT "$work/tcup" 2>/dev/null && break; sleep 0.05; done
  tcup=$(awk '/PORT/ { print $2 }' "$work/tcup")
fi
# The shared limit case's Redis.
redisport=0
if [[ " ${cases[*]} " == *" shared "* ]]; then
  command -v redis-server >/dev/null || { echo "missing redis-server (apt-get install redis-server)" >&2; exit 1; }
  redisport=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redisport" --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 & pids+=($!)
  wait_port "$redisport"
fi
# A unary call's body: one gRPC frame holding a small message.
printf '\x00\x00\x00\x00\x0a\x0a\x08gatehous' > "$work/call.bin"

# Resources for gatehouse's cases.
write_gatehouse_cases

grind() { # name port -- command...
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$work/$name.%p.out" --dump-instr=no \
    --collect-systime=no "$@" 2>"$work/$name.log" &
  pids+=($!)
  started=$!
}

# Traffic for SECONDS: wrk over HTTP/1.1, or h2load's unary gRPC calls over h2c (one stream
# at a time on each connection, like the HTTP/1.1 cases).
drive() {
  if [ "$name" = grpc ] || [ "$name" = bare-grpc ]; then
    h2load -c"$CONNECTIONS" -m"${STREAMS:-1}" -D "$1" -d "$work/call.bin" \
      -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:$p$target"
  else
    wrk -t1 -c"$CONNECTIONS" -d"${1}s" "${script[@]}" "http://127.0.0.1:$p$target"
  fi
}

printf "%-10s %12s %14s %12s\n" case requests "instr/request" "idle instr"
for name in "${cases[@]}"; do
  p=$(free_port)
  target="/bench"; script=()
  case $name in
    bare) grind "$name" $bin/examples/bare_proxy "127.0.0.1:$p" "127.0.0.1:$up" 1 ;;
    bare-grpc)
      target="/bench.v1.Bench/Unary"
      grind "$name" $bin/examples/bare_proxy "127.0.0.1:$p" "127.0.0.1:$grpcup" 1 grpc ;;
    pingap)
      command -v pingap >/dev/null || { echo "pingap: not installed (cargo install pingap --version 0.13.1 --locked), skipped" >&2; continue; }
      mkdir -p "$work/pingap"
      printf '[basic]\nthreads = 1\n[upstreams.up]\naddrs = ["127.0.0.1:%s"]\n[locations.all]\nupstream = "up"\n[servers.bench]\naddr = "127.0.0.1:%s"\nlocations = ["all"]\n' \
        "$up" "$p" > "$work/pingap/pingap.toml"
      grind "$name" pingap -c "$work/pingap/pingap.toml" ;;
    contract) grind "$name" $bin/examples/bare_proxy "127.0.0.1:$p" "127.0.0.1:$up" 1 contract ;;
    gatehouse|origin|full|many|plugged|wasm|lanes|mirrored|protected|limited|shared|grpc|transcode|traced|logged)
      routes=plain; [ "$name" = full ] && routes=full; [ "$name" = many ] && routes=many
      [ "$name" = wasm ] && routes=wasm
      [ "$name" = grpc ] && routes=grpc && target="/bench.v1.Bench/Unary"
      [ "$name" = transcode ] && routes=transcode && target="/v1/users/7"
      [ "$name" = lanes ] && routes=lanes
      [ "$name" = mirrored ] && routes=mirrored
      [ "$name" = protected ] && routes=protected
      [ "$name" = limited ] && routes=limited
      extra=""
      [ "$name" = shared ] && routes=shared && extra="redis: { url: \"redis://127.0.0.1:$redisport/0\", timeout: 50ms }"
      [ "$name" = plugged ] && routes=plugged && script=(-H "Origin: https://app.example.com")
      [ "$name" = origin ] && script=(-H "Origin: https://app.example.com")
      telemetry="{ access_log: { target: off } }"
      [ "$name" = traced ] && telemetry="{ otlp: { endpoint: \"http://127.0.0.1:$otlp\", sample_ratio: 1.0 }, access_log: { target: off } }"
      [ "$name" = logged ] && telemetry="{ otlp: { endpoint: \"http://127.0.0.1:$otlp\", sample_ratio: 1.0 }, access_log: { target: \"$work/access.log\" } }"
      [ "$name" = many ] && target="/svc-5000/bench"
      [ "$name" = full ] && script=(-s "$work/tokens.lua")
      cat > "$work/$name.yaml" <<YAML
listen: [{ addr: "127.0.0.1:$p" }]
threads: 1
admin: { listen: "127.0.0.1:$(free_port)" }
provider: { file: { paths: ["$work/$routes"], watch: false } }
telemetry: $telemetry
$extra
YAML
      GATEHOUSE_LOG=warn grind "$name" $bin/gatehouse run -c "$work/$name.yaml" \
        --upgrade-sock "$work/$name.sock" --pid-file "$work/$name.pid" ;;
    *) echo "unknown case $name" >&2; exit 2 ;;
  esac
  wait_port "$p"
  # Warm-up: connections, pools, caches; long enough for the full case to have seen (and
  # cached the verdict of) every token of its pool, so no signature check is counted.
  warm=2; [ "$name" = full ] && warm=6
  # Work a case leaves for later (a mirror's copies, sent off the request path) must land
  # in the window it belongs to: the process is given time to finish it before each dump.
  settle=0; [ "$name" = mirrored ] && settle=$SECONDS_PER_CASE
  drive "$warm" >/dev/null
  sleep "$settle"
  # What the process does with no traffic (timers, background services) over the same
  # time is measured first and subtracted, so a slower run (fewer requests) does not
  # spread it over fewer requests.
  callgrind_control --zero "$started" >/dev/null 2>&1
  sleep "$SECONDS_PER_CASE"
  callgrind_control --dump="$name-idle" "$started" >/dev/null 2>&1
  callgrind_control --zero "$started" >/dev/null 2>&1
  out=$(drive "$SECONDS_PER_CASE")
  sleep "$settle"
  callgrind_control --dump="$name" "$started" >/dev/null 2>&1
  if [ "$name" = grpc ] || [ "$name" = bare-grpc ]; then
    if ! grep -qE "^requests: .* 0 failed, 0 errored" <<<"$out"; then echo "$name: errors during the run:" >&2; echo "$out" >&2; exit 1; fi
    requests=$(awk '/^requests:/ { print $8 }' <<<"$out")
  else
    if grep -qE "Non-2xx|Socket errors" <<<"$out"; then echo "$name: errors during the run:" >&2; echo "$out" >&2; exit 1; fi
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  fi
  sleep 1
  idle=$(grep -l "^desc: Trigger: dump $name-idle\$" "$work/$name".*.out.* | xargs awk '/^summary:/ { s += $2 } END { print s + 0 }')
  busy=$(grep -l "^desc: Trigger: dump $name\$" "$work/$name".*.out.* | xargs awk '/^summary:/ { s += $2 } END { print s + 0 }')
  kill "$started" 2>/dev/null || true
  wait "$started" 2>/dev/null || true
  printf "%-10s %12s %14.0f %12.0f\n" "$name" "$requests" \
    "$(awk -v b="$busy" -v i="$idle" -v r="$requests" -v w="$(( (SECONDS_PER_CASE + settle) ))" -v s="$SECONDS_PER_CASE" 'BEGIN { print (b - i * w / s) / r }')" "$idle"
  [ -n "${KEEP:-}" ] && cp "$work/$name".*.out.* "$KEEP/" 2>/dev/null || true
done
