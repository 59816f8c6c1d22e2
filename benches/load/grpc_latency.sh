#!/usr/bin/env bash
# The latency a unary gRPC call gains through the gateway at half load.
#
# An nginx h2c server stands in for the gRPC upstream (`return 200` with a `grpc-status`
# trailer); the gateway (release build, one worker thread) proxies `/bench.v1.Bench/{method}`
# to it through a `scheme: grpc` upstream. h2load first finds the gateway's capacity
# (calls per second at full speed, CONNECTIONS connections, one stream each), then sends
# half of that rate for SECONDS, straight to nginx and through the gateway, and the per-call
# times of its log give the percentiles of each.
#
# Needs: nginx (nginx-light), h2load (nghttp2-client), python3.
# Usage: benches/load/grpc_latency.sh   (SECONDS=10 CONNECTIONS=8 by default; PREBUILT=1
#        skips the release build)
set -euo pipefail
cd "$(dirname "$0")/../.."

SECONDS_RUN=${SECONDS:-10}
CONNECTIONS=${CONNECTIONS:-8}
for tool in nginx h2load python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx-light nghttp2-client python3)" >&2; exit 1; }
done
[ -n "${PREBUILT:-}" ] || cargo build --release --quiet --bin gatehouse
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

up=$(free_port); gw=$(free_port); admin=$(free_port)
cat > "$work/up.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/nginx-error.log warn; pid $work/nginx.pid;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $work;
  server { listen 127.0.0.1:$up http2; keepalive_requests 10000000;
    location / { default_type application/grpc; add_trailer grpc-status 0 always; return 200 'ok'; } } }
CONF
nginx -c "$work/up.conf" -p "$work" & pids+=($!)
mkdir -p "$work/routes"
cat > "$work/routes/grpc.yaml" <<YAML
kind: Upstream
id: bench-grpc
scheme: grpc
nodes: [{ addr: "127.0.0.1:$up" }]
---
kind: Route
id: grpc
match: { paths: ["/bench.v1.Bench/{method}"] }
upstream: bench-grpc
YAML
cat > "$work/gw.yaml" <<YAML
listen: [{ addr: "127.0.0.1:$gw" }]
threads: 1
admin: { listen: "127.0.0.1:$admin" }
provider: { file: { paths: ["$work/routes"], watch: false } }
telemetry: { access_log: { target: off } }
YAML
GATEHOUSE_LOG=warn target/release/gatehouse run -c "$work/gw.yaml" \
  --upgrade-sock "$work/gw.sock" --pid-file "$work/gw.pid" 2>"$work/gw.log" & pids+=($!)
wait_port "$up"; wait_port "$gw"
printf '\x00\x00\x00\x00\x0a\x0a\x08gatehous' > "$work/call.bin"

calls() { # port seconds [rate per connection] [log]
  local extra=()
  [ -n "${3:-}" ] && extra+=(--rps "$3")
  [ -n "${4:-}" ] && extra+=(--log-file "$4")
  h2load -c"$CONNECTIONS" -m1 -D "$2" "${extra[@]}" -d "$work/call.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:$1/bench.v1.Bench/Unary"
}
percentiles() { # log
  python3 - "$1" <<'PY'
import sys
times = sorted(int(line.split()[2]) for line in open(sys.argv[1]) if line.strip())
pick = lambda q: times[min(len(times) - 1, int(q * len(times)))] / 1000.0
print(f"{len(times):>8} {pick(0.5):>9.3f} {pick(0.9):>9.3f} {pick(0.99):>9.3f}")
PY
}

calls "$gw" 2 >/dev/null
full=$(calls "$gw" 5 | awk '/^finished in/ { gsub(/req\/s,?/, "", $4); print int($4) }')
half=$(( full / 2 / CONNECTIONS )); [ "$half" -lt 1 ] && half=1
echo "gateway capacity: $full calls/s; half load: $((half * CONNECTIONS)) calls/s"
printf "%-10s %8s %9s %9s %9s\n" path calls "p50 ms" "p90 ms" "p99 ms"
calls "$up" "$SECONDS_RUN" "$half" "$work/direct.log" >/dev/null
printf "%-10s " direct; percentiles "$work/direct.log"
calls "$gw" "$SECONDS_RUN" "$half" "$work/gateway.log" >/dev/null
printf "%-10s " gateway; percentiles "$work/gateway.log"
