#!/usr/bin/env bash
# Load comparison: CPU time per request of nginx, a bare Pingora proxy (as is, and doing
# SPEC §4's per-request contract: timeouts, X-Request-Id, X-Forwarded-*), and gatehouse on
# a plain route (no plugins), all proxying to the same nginx upstream with keep-alive.
# gatehouse runs three times: quiet (no span export, no access log), `traced` (every
# request's span exported over OTLP/HTTP to a local sink, sample ratio 1.0), and `logged`
# (traced, plus the JSON access log written to a file).
#
# Each proxy runs with one worker thread pinned to CPU 0; the upstream and wrk share CPU 1.
# CPU per request = the proxy process's user+system time during the run / requests served,
# so the figure does not depend on whether the proxy was saturated.
#
# Needs: nginx (nginx-light), wrk, taskset; a release build (made here).
# The machine's noise is larger than the differences measured, so the proxies are measured
# in alternation for ROUNDS rounds and the median of each is reported.
#
# Usage: benches/load/compare.sh     (DURATION=10 CONNECTIONS=32 ROUNDS=5 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-32}
ROUNDS=${ROUNDS:-5}
for tool in nginx wrk taskset; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx-light wrk util-linux)" >&2; exit 1; }
done

cargo build --release --quiet --bin gatehouse --example bare_proxy
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

up=$(free_port); nginx_port=$(free_port); bare_port=$(free_port); contract_port=$(free_port); otlp=$(free_port)
gatehouse_port=$(free_port); traced_port=$(free_port); logged_port=$(free_port)

nginx_conf() { # $1 = body of the server block
  cat <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/nginx-error.log warn; pid $work/nginx-$2.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;
  upstream backend { server 127.0.0.1:$up; keepalive 128; }
  $1
}
CONF
}
nginx_conf "server { listen 127.0.0.1:$up; keepalive_requests 100000; location / { return 200 'ok'; } }
  server { listen 127.0.0.1:$otlp; keepalive_requests 100000; client_max_body_size 64m; location / { return 200; } }" up > "$work/up.conf"
nginx_conf "server { listen 127.0.0.1:$nginx_port; keepalive_requests 100000; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" proxy > "$work/proxy.conf"

taskset -c 1 nginx -c "$work/up.conf" -p "$work" & pids+=($!)
wait_port "$up"
taskset -c 0 nginx -c "$work/proxy.conf" -p "$work" & pids+=($!); ngx_pid=$!
taskset -c 0 target/release/examples/bare_proxy "127.0.0.1:$bare_port" "127.0.0.1:$up" 1 2>"$work/bare.log" & pids+=($!); bare_pid=$!
taskset -c 0 target/release/examples/bare_proxy "127.0.0.1:$contract_port" "127.0.0.1:$up" 1 contract 2>"$work/contract.log" & pids+=($!); contract_pid=$!

mkdir -p "$work/routes"
cat > "$work/routes/plain.yaml" <<YAML
kind: Upstream
id: backend
nodes: [{ addr: "127.0.0.1:$up" }]
---
kind: Route
id: plain
match: { paths: ["/**"] }
upstream: backend
YAML
start_gatehouse() { # name port telemetry
  cat > "$work/$1.yaml" <<YAML
listen: [{ addr: "127.0.0.1:$2" }]
threads: 1
admin: { listen: "127.0.0.1:$(free_port)" }
provider: { file: { paths: ["$work/routes"], watch: false } }
telemetry: $3
YAML
  GATEHOUSE_LOG=warn taskset -c 0 target/release/gatehouse run -c "$work/$1.yaml" \
    --upgrade-sock "$work/$1.sock" --pid-file "$work/$1.pid" 2>"$work/$1.log" & pids+=($!)
}
start_gatehouse gatehouse "$gatehouse_port" "{ access_log: { target: off } }"; gatehouse_pid=$!
start_gatehouse traced "$traced_port" "{ otlp: { endpoint: \"http://127.0.0.1:$otlp\", sample_ratio: 1.0 }, access_log: { target: off } }"; traced_pid=$!
start_gatehouse logged "$logged_port" "{ otlp: { endpoint: \"http://127.0.0.1:$otlp\", sample_ratio: 1.0 }, access_log: { target: \"$work/access.log\" } }"; logged_pid=$!
wait_port "$nginx_port"; wait_port "$bare_port"; wait_port "$contract_port"
wait_port "$gatehouse_port"; wait_port "$traced_port"; wait_port "$logged_port"

measure() { # name pid port round
  local name=$1 pid=$2 port=$3 round=$4
  local before after out="$work/$name.$round.wrk"
  before=$(cpu_ticks "$pid")
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/bench" > "$out"
  after=$(cpu_ticks "$pid")
  grep -qE "Non-2xx|Socket errors" "$out" && { echo "$name: errors during the run:" >&2; cat "$out" >&2; exit 1; }
  # one line per round: requests/s, p99, microseconds of proxy CPU per request
  awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" '
    /requests in/ { r = $1 } /Requests\/sec/ { rps = $2 } $1 == "99%" { p99 = $2 }
    END { printf "%.0f %s %.3f\n", rps, p99, t / hz * 1e6 / r }' "$out" >> "$work/$name.rounds"
}

proxies="nginx bare contract gatehouse traced logged"
for name in $proxies; do # warm-up: connections, pools, caches
  port_var="${name}_port"; taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:${!port_var}/bench" >/dev/null
done
for round in $(seq 1 "$ROUNDS"); do
  measure nginx "$ngx_pid" "$nginx_port" "$round"
  measure bare "$bare_pid" "$bare_port" "$round"
  measure contract "$contract_pid" "$contract_port" "$round"
  measure gatehouse "$gatehouse_pid" "$gatehouse_port" "$round"
  measure traced "$traced_pid" "$traced_port" "$round"
  measure logged "$logged_pid" "$logged_port" "$round"
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf "%-10s %12s %12s %16s   (median of %d rounds of %ss, %d connections)\n" proxy "req/s" "p99" "CPU us/req" "$ROUNDS" "$DURATION" "$CONNECTIONS"
for name in $proxies; do
  rps=$(awk '{print $1}' "$work/$name.rounds" | median)
  p99=$(awk '{print $2}' "$work/$name.rounds" | sort -V | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')
  cpu=$(awk '{print $3}' "$work/$name.rounds" | median)
  echo "$cpu" > "$work/$name.cpu"
  printf "%-10s %12.0f %12s %16.2f   rounds: %s\n" "$name" "$rps" "$p99" "$cpu" "$(awk '{printf "%.2f ", $3}' "$work/$name.rounds")"
done
awk -v n="$(cat "$work/nginx.cpu")" -v b="$(cat "$work/bare.cpu")" -v c="$(cat "$work/contract.cpu")" -v g="$(cat "$work/gatehouse.cpu")" \
    -v t="$(cat "$work/traced.cpu")" -v l="$(cat "$work/logged.cpu")" \
  'BEGIN { printf "\nCPU per request: bare Pingora / nginx %.2fx, gatehouse / nginx %.2fx\n", b/n, g/n
           printf "gatehouse / bare Pingora %.3fx, gatehouse / bare Pingora with the same contract %.3fx\n", g/b, g/c
           printf "traced / gatehouse %.3fx, traced + access log / gatehouse %.3fx\n", t/g, l/g }'
