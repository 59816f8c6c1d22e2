# gatehouse's resources for the load scripts' cases, written under $work for an upstream
# on 127.0.0.1:$up, with the release binaries in $bin. Sourced by compare.sh,
# instructions.sh and shared_limit.sh, so they measure exactly the same routes.
#
#   $work/plain/      one route `/**` to one static node
#   $work/full/       an RS256 JWT policy (required scope, a forwarded claim), a rate limit
#                     that never refuses, a 90/10 split and a header rewrite
#   $work/many/       10,000 routes `/svc-N/**`
#   $work/plugged/    the plain route with the cors, ip_restriction and request_size_limit
#                     plugins (requests carry an allowed Origin)
#   $work/wasm/       the plain route with the proxy-wasm plugin tests/wasm/add_header.wasm
#                     (one request header set from its configuration)
#   $work/grpc/       a route for /bench.v1.Bench/{method} to a `scheme: grpc` upstream (an
#                     nginx h2c server on $grpcup)
#   $work/transcode/  a transcoded route `/v1/**` (grpc_transcode, descriptors of
#                     tests/grpc/transcode/users.proto) to the Python gRPC server of
#                     tests/grpc/transcode/server.py on $tcup
#   $work/lanes/      the plain route to the same node in an upstream with `lanes` (one
#                     more node in a lane; requests carry the tag of the baseline's none)
#   $work/mirrored/   the plain route with the mirror plugin copying 10 % of requests to a
#                     second nginx server on $mirrorup
#   $work/protected/  the plain route to an upstream with a circuit breaker with slow_call,
#                     an adaptive concurrency limit (min 16, so 8 connections never meet
#                     it) and a retry budget
#   $work/limited/    the plain route with a rate limit by client address that never refuses
#   $work/shared/     the same limit with `scope: cluster`: one Redis step per request (the
#                     bootstrap's `redis` points at a redis-server on $redisport)
#   $work/tokens.lua  a wrk script sending the 1,000 pre-minted tokens in turn

# Helpers the load scripts share: a free loopback port, waiting (bounded) for a port to
# accept, a process's CPU time so far in clock ticks (user + system), the tools a script
# needs, a run's scratch folder, the nginx upstream and a gatehouse under measure.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 "${PORT_WAIT_TRIES:-400}"); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Fails naming what to install unless every tool named after the hint is on the PATH.
need_tools() {
  local hint=$1; shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool ($hint)" >&2; exit 1; }
  done
}

# The nginx upstream on core 1: `return 200 'ok'` on port $up, and the server blocks given
# (if any) beside it. Waits for $up.
start_nginx_upstream() {
  cat > "$work/up.conf" <<CONF
daemon off; master_process off; worker_processes 1; error_log $work/nginx-error.log warn; pid $work/nginx.pid;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;
  server { listen 127.0.0.1:$up; keepalive_requests 10000000; location / { return 200 'ok'; } }
  ${1:-} }
CONF
  taskset -c 1 nginx -c "$work/up.conf" -p "$work" & pids+=($!)
  wait_port "$up"
}

# Case $1: gatehouse (release, one worker, no access log) on core 0 and port ${port[$1]},
# serving the routes of folder $2, with bootstrap lines $3 (if any); its pid in ${pid[$1]}.
# Waits for its port.
start_gatehouse() {
  local name=$1 routes=$2 extra=${3:-}
  cat > "$work/$name.yaml" <<YAML
listen: [{ addr: "127.0.0.1:${port[$name]}" }]
threads: 1
admin: { listen: "127.0.0.1:$(free_port)" }
provider: { file: { paths: ["$work/$routes"], watch: false } }
telemetry: { access_log: { target: off } }
$extra
YAML
  GATEHOUSE_LOG=warn taskset -c 0 "$bin/gatehouse" run -c "$work/$name.yaml" \
    --upgrade-sock "$work/$name.sock" --pid-file "$work/$name.pid" 2>"$work/$name.log" &
  pid[$name]=$!; pids+=($!)
  wait_port "${port[$name]}"
}

# A scratch folder ($work) for one run, and the processes started for it ($pids): stopped
# and removed when the script exits, however it exits.
start_work() {
  work=$(mktemp -d)
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

write_gatehouse_cases() {
  mkdir -p "$work/plain" "$work/full" "$work/many" "$work/plugged" "$work/wasm" "$work/grpc" "$work/transcode" "$work/lanes" "$work/mirrored" "$work/protected" "$work/limited" "$work/shared"
  upstream_yaml="kind: Upstream
id: backend
nodes: [{ addr: \"127.0.0.1:$up\" }]"
  printf '%s\n---\nkind: Route\nid: plain\nmatch: { paths: ["/**"] }\nupstream: backend\n' "$upstream_yaml" > "$work/plain/routes.yaml"
  # A million a second, a million at once: never refused, every request counted.
  local limit="rate: 1000000, per: 1s, burst: 1000000, key: client_ip"
  printf '%s\n---\nkind: Route\nid: plain\nmatch: { paths: ["/**"] }\nupstream: backend\nrate_limit: { %s }\n' "$upstream_yaml" "$limit" > "$work/limited/routes.yaml"
  printf '%s\n---\nkind: Route\nid: plain\nmatch: { paths: ["/**"] }\nupstream: backend\nrate_limit: { %s, scope: cluster }\n' "$upstream_yaml" "$limit" > "$work/shared/routes.yaml"
  cat > "$work/plugged/routes.yaml" <<YAML
$upstream_yaml
---
kind: Route
id: plugged
match: { paths: ["/**"] }
upstream: backend
plugins:
  - name: cors
    config: { allow_origins: ["https://app.example.com", "*.example.org"], allow_methods: [GET, POST], allow_credentials: true }
  - name: ip_restriction
    config: { allow: [127.0.0.0/8, 10.0.0.0/8], deny: [192.0.2.0/24] }
  - name: request_size_limit
    config: { max_body: 1MiB }
YAML
  cat > "$work/grpc/routes.yaml" <<YAML
kind: Upstream
id: bench-grpc
scheme: grpc
nodes: [{ addr: "127.0.0.1:${grpcup:-0}" }]
---
kind: Route
id: grpc
match: { paths: ["/bench.v1.Bench/{method}"] }
upstream: bench-grpc
YAML
  cat > "$work/transcode/routes.yaml" <<YAML
kind: Upstream
id: users
scheme: grpc
nodes: [{ addr: "127.0.0.1:${tcup:-0}" }]
---
kind: Route
id: transcode
match: { paths: ["/v1/**"] }
upstream: users
grpc_transcode:
  descriptors: "$work/users.pb"
  services: [users.v1.UserService]
YAML
  cat > "$work/protected/routes.yaml" <<YAML
$upstream_yaml
circuit_breaker: { error_rate: 0.5, min_requests: 20, window: 10s, open_for: 5s, slow_call: { threshold: 800ms, ratio: 0.5 } }
concurrency: { adaptive: { min: 16, max: 1000 } }
retry_budget: { ratio: 0.2, min_per_second: 10 }
---
kind: Route
id: plain
match: { paths: ["/**"] }
upstream: backend
YAML
  cat > "$work/lanes/routes.yaml" <<YAML
kind: Upstream
id: backend
nodes: [{ addr: "127.0.0.1:$up" }, { addr: "127.0.0.1:${mirrorup:-0}", metadata: { lane: stress } }]
lanes: { header: X-Traffic-Tag, metadata: lane, fallback: baseline }
---
kind: Route
id: plain
match: { paths: ["/**"] }
upstream: backend
YAML
  cat > "$work/mirrored/routes.yaml" <<YAML
$upstream_yaml
---
kind: Upstream
id: shadow
nodes: [{ addr: "127.0.0.1:${mirrorup:-0}" }]
---
kind: Route
id: mirrored
match: { paths: ["/**"] }
upstream: backend
plugins:
  - name: mirror
    config: { upstream: shadow, sample: 0.1 }
YAML
  cat > "$work/wasm/routes.yaml" <<YAML
$upstream_yaml
---
kind: Route
id: wasm
match: { paths: ["/**"] }
upstream: backend
plugins:
  - name: wasm
    config: { module: "$PWD/tests/wasm/add_header.wasm", config: '{"header": "x-wasm", "value": "on"}', timeout: 5ms }
YAML

  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/jwt.pem" 2>/dev/null
  openssl pkey -in "$work/jwt.pem" -pubout -out "$work/jwt.pub"
  "$bin"/examples/mint_tokens "$work/jwt.pem" bench 1000 "$work/tokens"
  pub=$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$work/jwt.pub")
  cat > "$work/full/routes.yaml" <<YAML
$upstream_yaml
---
kind: Upstream
id: backend-canary
nodes: [{ addr: "127.0.0.1:$up" }]
---
kind: AuthPolicy
id: bench
jwt: { keys: [{ kid: bench, alg: RS256, public_key: $pub }] }
required_scopes: [bench]
forward: { headers: { X-User-Id: sub } }
---
kind: Route
id: full
match: { paths: ["/**"] }
auth: bench
rate_limit: { rate: 1000000000, per: 1s, key: consumer }
weights: [{ upstream: backend, weight: 90 }, { upstream: backend-canary, weight: 10 }]
request_headers: { set: { X-Gateway: "gatehouse \${route_id}" }, remove: [X-Debug] }
YAML
  cat > "$work/tokens.lua" <<LUA
local tokens = {}
for line in io.lines("$work/tokens") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/bench", { ["Authorization"] = "Bearer " .. tokens[i] })
end
LUA
  python3 - "$work/many/routes.yaml" "$upstream_yaml" <<'PY'
import sys
with open(sys.argv[1], "w") as f:
    f.write(sys.argv[2] + "\n")
    for i in range(10000):
        f.write(f'---\nkind: Route\nid: svc-{i}\nmatch: {{ paths: ["/svc-{i}/**"] }}\nupstream: backend\n')
PY
}
