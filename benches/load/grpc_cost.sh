#!/usr/bin/env bash
# What a unary gRPC call costs in CPU time, against a plain HTTP/1.1 request (SPEC §9's
# budget is stated in CPU per call):
#
#   bare       the bare Pingora proxy (examples/bare_proxy.rs), HTTP/1.1, wrk
#   plain      gatehouse's plain route, HTTP/1.1, wrk
#   bare-grpc  the bare Pingora proxy taking unary calls over h2c and speaking HTTP/2 by
#              prior knowledge to the h2c upstream, h2load
#   grpc       gatehouse's route to a `scheme: grpc` upstream, the same calls, h2load
#
# Each proxy runs one worker thread pinned to CPU 0; the nginx upstreams (`return 200 ok`,
# and an h2c server answering every call with a `grpc-status: 0` trailer) and the load
# generator share CPU 1. Both generators keep CONNECTIONS connections; wrk sends one request
# at a time on each, h2load STREAMS calls at a time (1 by default, the same traffic as
# wrk's; gRPC clients multiplex their calls on one connection, which STREAMS=10 shows).
# CPU per request = the proxy process's user + system time during the run / requests
# served: the kernel's share (sockets, TCP) counts, as it does in the process's bill. The
# cases are measured in alternation for ROUNDS rounds; medians are reported. The user-space
# instructions alone are instructions.sh's `bare gatehouse bare-grpc grpc`.
#
# Needs: nginx (nginx-light), wrk, h2load (nghttp2-client), taskset, python3. Builds the
# release binaries (PREBUILT=1 skips that).
#
# Usage: benches/load/grpc_cost.sh     (DURATION=10 CONNECTIONS=50 STREAMS=1 ROUNDS=3 by
#        default)
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/load/cases.sh

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
STREAMS=${STREAMS:-1}
ROUNDS=${ROUNDS:-3}
need_tools "apt-get install nginx-light wrk nghttp2-client util-linux python3" nginx wrk h2load taskset python3

[ -n "${PREBUILT:-}" ] || cargo build --release --quiet --bin gatehouse --example bare_proxy
bin=target/release
start_work

ticks_per_second=$(getconf CLK_TCK)

up=$(free_port); grpcup=$(free_port)
start_nginx_upstream "server { listen 127.0.0.1:$grpcup http2; keepalive_requests 10000000; location / { default_type application/grpc; add_trailer grpc-status 0 always; return 200 'ok'; } }"
wait_port "$grpcup"
# A unary call's body: one gRPC frame holding a small message.
printf '\x00\x00\x00\x00\x0a\x0a\x08gatehous' > "$work/call.bin"

write_gatehouse_cases
cases=(bare plain bare-grpc grpc)
declare -A port pid target
for name in "${cases[@]}"; do
  port[$name]=$(free_port)
  target[$name]="/bench"
  case $name in
    bare) taskset -c 0 $bin/examples/bare_proxy "127.0.0.1:${port[$name]}" "127.0.0.1:$up" 1 2>"$work/$name.log" & ;;
    bare-grpc)
      target[$name]="/bench.v1.Bench/Unary"
      taskset -c 0 $bin/examples/bare_proxy "127.0.0.1:${port[$name]}" "127.0.0.1:$grpcup" 1 grpc 2>"$work/$name.log" & ;;
    plain|grpc)
      [ "$name" = grpc ] && target[$name]="/bench.v1.Bench/Unary"
      start_gatehouse "$name" "$name"
      continue ;;
  esac
  pid[$name]=$!; pids+=($!)
  wait_port "${port[$name]}"
done

# Traffic for $2 seconds to case $1; prints the requests served, or fails on any error.
drive() {
  local name=$1 seconds=$2 out
  if [[ $name == *grpc ]]; then
    out=$(taskset -c 1 h2load -c"$CONNECTIONS" -m"$STREAMS" -D "$seconds" -d "$work/call.bin" \
      -H 'content-type: application/grpc' -H 'te: trailers' "http://127.0.0.1:${port[$name]}${target[$name]}")
    if ! grep -qE "^requests: .* 0 failed, 0 errored" <<<"$out"; then echo "$name: errors during the run:" >&2; echo "$out" >&2; exit 1; fi
    awk '/^requests:/ { print $8 }' <<<"$out"
  else
    out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${seconds}s" "http://127.0.0.1:${port[$name]}${target[$name]}")
    if grep -qE "Non-2xx|Socket errors" <<<"$out"; then echo "$name: errors during the run:" >&2; echo "$out" >&2; exit 1; fi
    awk '/requests in/ { print $1 }' <<<"$out"
  fi
}

for name in "${cases[@]}"; do drive "$name" 2 >/dev/null; done

# One measured run: requests/s and µs of the proxy's CPU per request.
measure() {
  local name=$1 t0 t1 requests
  t0=$(cpu_ticks "${pid[$name]}")
  requests=$(drive "$name" "$DURATION")
  t1=$(cpu_ticks "${pid[$name]}")
  awk -v n="$requests" -v d="$DURATION" -v t="$((t1 - t0))" -v hz="$ticks_per_second" \
    'BEGIN { printf "%.0f %.2f\n", n / d, t * 1e6 / hz / n }'
}

declare -A runs
for round in $(seq 1 "$ROUNDS"); do
  for name in "${cases[@]}"; do
    runs[$name]+="$(measure "$name")"$'\n'
  done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf "%-10s %10s %14s\n" case "req/s" "CPU µs/req"
declare -A cpu
for name in "${cases[@]}"; do
  rate=$(awk 'NF { print $1 }' <<<"${runs[$name]}" | median)
  cpu[$name]=$(awk 'NF { print $2 }' <<<"${runs[$name]}" | median)
  printf "%-10s %10.0f %14.2f\n" "$name" "$rate" "${cpu[$name]}"
done
awk -v g="${cpu[grpc]}" -v p="${cpu[plain]}" -v bg="${cpu[bare-grpc]}" -v b="${cpu[bare]}" 'BEGIN {
  printf "grpc / plain: %.2fx (budget 1.3x)   bare-grpc / plain: %.2fx\n", g / p, bg / p
  printf "over its bare floor: grpc %.2fx, plain %.2fx\n", g / bg, p / b }'
