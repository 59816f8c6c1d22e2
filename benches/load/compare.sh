#!/usr/bin/env bash
# Load comparison: CPU time per request of nginx, HAProxy, pingap (when installed), a bare
# Pingora proxy (as is, and doing SPEC §4's per-request contract: timeouts, X-Request-Id,
# X-Forwarded-*), and gatehouse in four cases, all proxying to the same nginx upstream
# (`return 200 ok`) over keep-alive connections:
#
#   gatehouse  (a) a plain route, access log off, no span export
#   full       (b) an RS256 JWT from a pool of 1,000 pre-minted tokens, a rate limit that
#                  never refuses, a 90/10 weighted split (both sides the same upstream
#                  server), a header rewrite, metrics
#   many       (c) the plain route among 10,000 routes
#   traced     (a) with every request's span exported over OTLP/HTTP (sample ratio 1.0)
#   logged     (d) traced, plus the JSON access log written to a file
#
# Each proxy runs with one worker thread pinned to CPU 0; the upstream, the OTLP sink and
# wrk share CPU 1. CPU per request = the proxy process's user+system time during the run /
# requests served, so the figure does not depend on whether the proxy was saturated.
# The machine's noise is larger than some differences measured, so the proxies are measured
# in alternation for ROUNDS rounds and the median of each is reported. Only ratios taken in
# one run compare.
#
# Needs: nginx (nginx-light), wrk, taskset, python3; haproxy and pingap are optional (a
# missing one is skipped with a note). Builds the release binaries it needs.
#
# Usage: benches/load/compare.sh     (DURATION=10 CONNECTIONS=50 ROUNDS=5 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/load/cases.sh

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
ROUNDS=${ROUNDS:-5}
for tool in nginx wrk taskset python3 openssl; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install nginx-light wrk util-linux python3 openssl)" >&2; exit 1; }
done

cargo build --release --quiet --bin gatehouse --example bare_proxy --example mint_tokens
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

rss_mib() { awk '/VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

declare -A port pid path lua
proxies=()
add() { proxies+=("$1"); port[$1]=$2; pid[$1]=$3; path[$1]=$4; lua[$1]=${5:-}; }

up=$(free_port); otlp=$(free_port)

nginx_conf() { # $1 = servers, $2 = name
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
taskset -c 1 nginx -c "$work/up.conf" -p "$work" & pids+=($!)
wait_port "$up"
add direct "$up" 0 /bench

p=$(free_port)
nginx_conf "server { listen 127.0.0.1:$p; keepalive_requests 100000; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }" proxy > "$work/proxy.conf"
taskset -c 0 nginx -c "$work/proxy.conf" -p "$work" & pids+=($!); add nginx "$p" $! /bench

if command -v haproxy >/dev/null; then
  p=$(free_port)
  cat > "$work/haproxy.cfg" <<CFG
global
  nbthread 1
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe
  bind 127.0.0.1:$p
  default_backend be
backend be
  server up 127.0.0.1:$up
CFG
  taskset -c 0 haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" & pids+=($!); add haproxy "$p" $! /bench
else
  echo "note: haproxy not installed (apt-get install haproxy): skipped" >&2
fi

if command -v pingap >/dev/null; then
  p=$(free_port)
  mkdir -p "$work/pingap"
  cat > "$work/pingap/pingap.toml" <<TOML
[basic]
threads = 1
[upstreams.up]
addrs = ["127.0.0.1:$up"]
[locations.all]
upstream = "up"
[servers.bench]
addr = "127.0.0.1:$p"
locations = ["all"]
TOML
  taskset -c 0 pingap -c "$work/pingap/pingap.toml" 2>"$work/pingap.log" & pids+=($!); add pingap "$p" $! /bench
else
  echo "note: pingap not installed (cargo install pingap --version 0.13.1 --locked): skipped" >&2
fi

p=$(free_port)
taskset -c 0 target/release/examples/bare_proxy "127.0.0.1:$p" "127.0.0.1:$up" 1 2>"$work/bare.log" & pids+=($!); add bare "$p" $! /bench
p=$(free_port)
taskset -c 0 target/release/examples/bare_proxy "127.0.0.1:$p" "127.0.0.1:$up" 1 contract 2>"$work/contract.log" & pids+=($!); add contract "$p" $! /bench

# gatehouse's resources for each case.
bin=target/release
write_gatehouse_cases

start_gatehouse() { # name routes-dir telemetry
  local p; p=$(free_port)
  cat > "$work/$1.yaml" <<YAML
listen: [{ addr: "127.0.0.1:$p" }]
threads: 1
admin: { listen: "127.0.0.1:$(free_port)" }
provider: { file: { paths: ["$2"], watch: false } }
telemetry: $3
YAML
  GATEHOUSE_LOG=warn taskset -c 0 target/release/gatehouse run -c "$work/$1.yaml" \
    --upgrade-sock "$work/$1.sock" --pid-file "$work/$1.pid" 2>"$work/$1.log" & pids+=($!)
  started_port=$p; started_pid=$!
}
quiet="{ access_log: { target: off } }"
traced="{ otlp: { endpoint: \"http://127.0.0.1:$otlp\", sample_ratio: 1.0 }, access_log: { target: off } }"
logged="{ otlp: { endpoint: \"http://127.0.0.1:$otlp\", sample_ratio: 1.0 }, access_log: { target: \"$work/access.log\" } }"
start_gatehouse gatehouse "$work/plain" "$quiet"; add gatehouse "$started_port" "$started_pid" /bench
start_gatehouse full "$work/full" "$quiet"; add full "$started_port" "$started_pid" /bench "$work/tokens.lua"
start_gatehouse many "$work/many" "$quiet"; add many "$started_port" "$started_pid" /svc-5000/bench
start_gatehouse traced "$work/plain" "$traced"; add traced "$started_port" "$started_pid" /bench
start_gatehouse logged "$work/plain" "$logged"; add logged "$started_port" "$started_pid" /bench
for name in "${proxies[@]}"; do wait_port "${port[$name]}"; done

run_wrk() { # name seconds [extra wrk args]
  local name=$1 seconds=$2; shift 2
  local script=()
  [ -n "${lua[$name]}" ] && script=(-s "${lua[$name]}")
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${seconds}s" --latency "${script[@]}" "$@" "http://127.0.0.1:${port[$name]}${path[$name]}"
}
measure() { # name round
  local name=$1 round=$2 before=0 after=0 out="$work/$1.$2.wrk"
  [ "${pid[$name]}" != 0 ] && before=$(cpu_ticks "${pid[$name]}")
  run_wrk "$name" "$DURATION" > "$out"
  [ "${pid[$name]}" != 0 ] && after=$(cpu_ticks "${pid[$name]}")
  grep -qE "Non-2xx|Socket errors" "$out" && { echo "$name: errors during the run:" >&2; cat "$out" >&2; exit 1; }
  # one line per round: requests/s, p50, p99, microseconds of proxy CPU per request
  awk -v t="$((after - before))" -v hz="$(getconf CLK_TCK)" '
    /requests in/ { r = $1 } /Requests\/sec/ { rps = $2 } $1 == "50%" { p50 = $2 } $1 == "99%" { p99 = $2 }
    END { printf "%.0f %s %s %.3f\n", rps, p50, p99, t / hz * 1e6 / r }' "$out" >> "$work/$name.rounds"
}

for name in "${proxies[@]}"; do run_wrk "$name" 2 >/dev/null; done # warm-up: connections, pools, caches
for round in $(seq 1 "$ROUNDS"); do
  for name in "${proxies[@]}"; do measure "$name" "$round"; done
done

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
middle() { sort -V | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
printf "%-10s %10s %10s %10s %12s %10s   (median of %d rounds of %ss, %d connections)\n" \
  proxy "req/s" "p50" "p99" "CPU us/req" "RSS MiB" "$ROUNDS" "$DURATION" "$CONNECTIONS"
declare -A cpu
for name in "${proxies[@]}"; do
  rps=$(awk '{print $1}' "$work/$name.rounds" | median)
  p50=$(awk '{print $2}' "$work/$name.rounds" | middle)
  p99=$(awk '{print $3}' "$work/$name.rounds" | middle)
  cpu[$name]=$(awk '{print $4}' "$work/$name.rounds" | median)
  rss="-"; [ "${pid[$name]}" != 0 ] && rss=$(rss_mib "${pid[$name]}")
  if [ "$name" = direct ]; then shown="-"; else shown=$(printf "%.2f" "${cpu[$name]}"); fi
  printf "%-10s %10.0f %10s %10s %12s %10s   rounds: %s\n" "$name" "$rps" "$p50" "$p99" "$shown" "$rss" \
    "$(awk '{printf "%.2f ", $4}' "$work/$name.rounds")"
done
ratio() { awk -v a="${cpu[$1]:-0}" -v b="${cpu[$2]:-0}" 'BEGIN { if (a > 0 && b > 0) printf "%.3fx", a / b; else printf "n/a" }'; }
echo
echo "CPU per request, same run:"
echo "  (a) gatehouse / bare Pingora $(ratio gatehouse bare)   (target <= 1.05x)"
echo "      gatehouse / bare Pingora with the same contract $(ratio gatehouse contract)"
echo "      gatehouse / nginx $(ratio gatehouse nginx)   (target <= 1.5x); bare Pingora / nginx $(ratio bare nginx)"
echo "      gatehouse / HAProxy $(ratio gatehouse haproxy); gatehouse / pingap $(ratio gatehouse pingap)   (target <= 0.9x)"
echo "  (b) full / gatehouse $(ratio full gatehouse)   (target <= 1.25x)"
echo "  (c) 10,000 routes / gatehouse $(ratio many gatehouse)   (target <= 1.05x)"
echo "  (d) traced / gatehouse $(ratio traced gatehouse); traced + access log / gatehouse $(ratio logged gatehouse)   (target <= 1.2x)"

# Latency at half of gatehouse's maximum throughput: every connection waits a pause after
# each answer (wrk's `delay`, whole milliseconds, drawn uniformly around the mean so the
# connections do not fire in lockstep bursts), which paces the load to about
# CONNECTIONS / mean pause requests per second without saturating anything.
half=$(awk -v r="$(awk '{print $1}' "$work/gatehouse.rounds" | median)" 'BEGIN { printf "%d", r / 2 }')
pause=$(awk -v c="$CONNECTIONS" -v h="$half" 'BEGIN { p = c * 1000 / h; printf "%d", (p < 1) ? 1 : p + 0.5 }')
echo 'local p = tonumber(os.getenv("PACE_MS")); delay = function() return math.random(1, 2 * p - 1) end' > "$work/paced.lua"
echo
echo "Latency at about half of gatehouse's maximum ($half req/s: $CONNECTIONS connections, ${pause} ms mean pause):"
declare -A paced
for name in direct nginx bare gatehouse; do
  out=$(PACE_MS=$pause taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$work/paced.lua" \
    "http://127.0.0.1:${port[$name]}${path[$name]}")
  paced[$name]=$(awk '$1 == "99%" { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } print v }' <<<"$out")
  printf "  %-10s %8.0f req/s   p50 %8s   p99 %8.3f ms\n" "$name" \
    "$(awk '/Requests\/sec/ { print $2 }' <<<"$out")" "$(awk '$1 == "50%" { print $2 }' <<<"$out")" "${paced[$name]}"
done
echo "  P99 added by gatehouse over direct: $(awk -v g="${paced[gatehouse]}" -v d="${paced[direct]}" 'BEGIN { printf "%.3f ms", g - d }')   (target <= 1 ms)"
