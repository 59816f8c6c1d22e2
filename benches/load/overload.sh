#!/usr/bin/env bash
# What a concurrency limit does for an upstream driven past its capacity (SPEC §11).
#
# The upstream of tests/overload.rs serves 50 requests at a time, 250 ms each (200
# requests/s), and queues the rest first come first served, so it slows as more arrive. An
# open-loop driver (each request sent on its own task, on a fixed schedule, whatever became
# of the earlier ones) sends three times its capacity, 600 requests/s, through the gateway
# (two worker threads, access log off), to a route with:
#
#   none      a plain upstream: every request is admitted and waits in the upstream's
#             queue; 3 s of load
#   adaptive  `concurrency.adaptive: { min: 5, max: 1000 }`: past the limit the gateway
#             finds from the upstream's latency, it answers 503 `overloaded` at once; 15 s
#             of load, of which the first 5 s (the limit's warm-up) are not counted
#
# Figures per case: the P99 latency with no load (12 requests/s, every request answered
# 200); the P99 of the requests admitted (answered 200) under the load, and its ratio to
# the unloaded one; the median latency of the admitted requests sent in the first and in
# the last second counted (growing without a limit, flat with one); what the upstream
# served per second (its own count of completed requests) and the P99 of the time a request
# waited in its queue; the requests admitted and refused per second, and how long a refusal
# took (P99); the most requests the upstream held at once (queued or served, whole run).
# The driver, the upstream and the gateway share the machine. The figures are those the two
# tests print, and assert.
#
# Needs: nothing beyond cargo. Usage: benches/load/overload.sh  (builds the tests in the
# release profile)
set -euo pipefail
cd "$(dirname "$0")/../.."

out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
cargo test --release --test overload -- --nocapture --test-threads=1 2>&1 | tee "$out" || status=$?

echo
echo "| case | unloaded P99 | loaded P99 | ratio | median, first → last second | upstream served | its queue wait P99 | admitted | refused | refusal P99 | peak at upstream |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
grep -o 'figures: .*' "$out" | awk '{
  delete f
  for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
  printf "| %s | %s ms | %s ms | %sx | %s → %s ms | %s/s | %s ms | %s/s | %s/s | %s ms | %s |\n", \
    f["case"], f["unloaded_p99_ms"], f["loaded_p99_ms"], f["ratio"], f["first_median_ms"], \
    f["last_median_ms"], f["served_per_s"], f["queue_p99_ms"], f["admitted_per_s"], \
    f["refused_per_s"], f["refused_p99_ms"], f["peak_in_flight"]
}'
exit "$status"
