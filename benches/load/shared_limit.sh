#!/usr/bin/env bash
# What a `scope: cluster` rate limit costs (SPEC §13), against the same limit kept locally:
#
#   limited   the plain route with a rate limit by client address that never refuses
#   shared    the same limit with `scope: cluster`: one step in Redis per request
#
# Each gatehouse runs one worker thread pinned to CPU 0; the nginx upstream, Redis and wrk
# share CPU 1. Per request: the gateway's CPU time (user + system, so the Redis round trip's
# socket work counts), Redis's CPU time, the Redis calls made (INFO commandstats), and the
# latency wrk sees. The two are measured in alternation for ROUNDS rounds; medians are
# reported. Then the throughput one Redis core sustains running the limiter script alone
# (redis-benchmark, many keys, pipelined as the gateway's connection pipelines): the
# requests a second one Redis can limit for a whole fleet.
#
# Needs: nginx (nginx-light), wrk, taskset, python3, redis-server (with redis-cli and
# redis-benchmark). Builds the release binary.
#
# Usage: benches/load/shared_limit.sh     (DURATION=10 CONNECTIONS=50 ROUNDS=3 by default)
set -euo pipefail
cd "$(dirname "$0")/../.."
source benches/load/cases.sh

DURATION=${DURATION:-10}
CONNECTIONS=${CONNECTIONS:-50}
ROUNDS=${ROUNDS:-3}
need_tools "apt-get install nginx-light wrk util-linux python3 redis-server" nginx wrk taskset python3 redis-server redis-cli redis-benchmark

cargo build --release --quiet --bin gatehouse
bin=target/release
start_work

ticks_per_second=$(getconf CLK_TCK)

up=$(free_port); redisport=$(free_port)
start_nginx_upstream
taskset -c 1 redis-server --bind 127.0.0.1 --port "$redisport" --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
redispid=$!; pids+=($redispid)
wait_port "$redisport"
rcli() { redis-cli -p "$redisport" "$@"; }
evalsha_calls() { rcli INFO commandstats | awk -F'[=,:]' '/^cmdstat_evalsha:/ { print $3 + 0; found=1 } END { if (!found) print 0 }'; }

write_gatehouse_cases
declare -A port pid
for name in limited shared; do
  port[$name]=$(free_port)
  extra=""
  [ "$name" = shared ] && extra="redis: { url: \"redis://127.0.0.1:$redisport/0\", timeout: 50ms }"
  start_gatehouse "$name" "$name" "$extra"
  taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:${port[$name]}/bench" >/dev/null
done

# One measured run: requests/s, gateway µs of CPU per request, Redis µs per request, Redis
# calls per request, P50 and P99 (ms).
measure() {
  local name=$1 out t0 t1 r0 r1 c0 c1 requests
  t0=$(cpu_ticks "${pid[$name]}"); r0=$(cpu_ticks "$redispid"); c0=$(evalsha_calls)
  out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:${port[$name]}/bench")
  t1=$(cpu_ticks "${pid[$name]}"); r1=$(cpu_ticks "$redispid"); c1=$(evalsha_calls)
  if grep -qE "Non-2xx|Socket errors" <<<"$out"; then echo "$name: errors during the run:" >&2; echo "$out" >&2; exit 1; fi
  requests=$(awk '/requests in/ { print $1 }' <<<"$out")
  awk -v n="$requests" -v d="$DURATION" -v t="$((t1 - t0))" -v r="$((r1 - r0))" -v c="$((c1 - c0))" -v hz="$ticks_per_second" \
    -v p50="$(awk '$1 == "50%" { print $2 }' <<<"$out")" -v p99="$(awk '$1 == "99%" { print $2 }' <<<"$out")" \
    'function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; return v * 1000 }
     BEGIN { printf "%.0f %.2f %.2f %.2f %.3f %.3f\n", n / d, t * 1e6 / hz / n, r * 1e6 / hz / n, c / n, ms(p50), ms(p99) }'
}

declare -A runs
for round in $(seq 1 "$ROUNDS"); do
  for name in limited shared; do
    runs[$name]+="$(measure "$name")"$'\n'
  done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
printf "%-8s %10s %14s %14s %14s %9s %9s\n" case "req/s" "gw CPU µs/req" "redis µs/req" "redis calls" "P50 ms" "P99 ms"
declare -A cpu
for name in limited shared; do
  cols=()
  for col in 1 2 3 4 5 6; do cols+=("$(awk -v c="$col" 'NF { print $c }' <<<"${runs[$name]}" | median)"); done
  cpu[$name]=${cols[1]}
  printf "%-8s %10.0f %14.2f %14.2f %14.2f %9.3f %9.3f\n" "$name" "${cols[@]}"
done
awk -v s="${cpu[shared]}" -v l="${cpu[limited]}" 'BEGIN { printf "shared / limited gateway CPU per request: %.2fx\n", s / l }'

# One Redis core running the limiter script alone: 100,000 keys, 50 clients, pipelined 16
# deep (and, for the gateway's worst case, one command at a time).
sha=$(rcli SCRIPT LOAD "$(sed -n '/^pub const GCRA: &str = r#"$/,/^"#;$/p' src/fleet/limits/mod.rs | sed '1d;$d')")
[[ "$sha" =~ ^[0-9a-f]{40}$ ]] || { echo "the limiter script did not load: $sha" >&2; exit 1; }
for pipeline in 16 1; do
  rate=$(taskset -c 1 redis-benchmark -p "$redisport" -n 400000 -c 50 -P "$pipeline" -r 100000 -q \
    EVALSHA "$sha" 1 "bench:__rand_int__" 1 1000000 2>&1 | tr '\r' '\n' | grep -o '[0-9.]* requests per second' | tail -1 | awk '{ print $1 }')
  echo "one Redis core, limiter steps/s (pipeline $pipeline): $rate"
done
# What one bucket holds in Redis, for keys as the gateway writes them (one request an hour,
# so the bucket stays).
for key in "gatehouse:rl:route:orders:0123456789ab:ip:203.0.113.7" \
  "gatehouse:rl:route:orders:0123456789ab:k:0123456789abcdef0123456789abcdef"; do
  rcli EVALSHA "$sha" 1 "$key" 3600000000 1 >/dev/null
  echo "bytes in Redis for ${key##*:rl:}: $(rcli MEMORY USAGE "$key")"
done
