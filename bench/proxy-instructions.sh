#!/usr/bin/env bash
# bench/proxy-instructions.sh: user-space instructions per proxied HTTP/1.1 request, counted by
# callgrind, so two binaries can be compared on a busy machine (instruction counts do not
# depend on the load; wall-clock figures do).
#
#   bench/proxy-instructions.sh [TANDEM_BINARY...]    (default: target/release/tandem)
#   KEEP_PROFILE=DIR keeps each binary's profile of the longer run as DIR/NAME.callgrind.
#   SAMPLER=RATIO turns tracing on (`parentbased_traceidratio` at RATIO: 0.0 traces and samples
#   nothing, 1.0 samples and exports every request over OTLP/HTTP to an nginx stub), as the
#   bench's tandem_traced and tandem_sampled contenders.
#
# For each binary: nginx (1 worker, "ok\n") as the app, tandem under valgrind with one worker
# and the access log off, and Python's http.client sending GETs over 4 keep-alive connections:
# one run of 400 requests and one of 2,400; per request = (2,400's total - 400's) / 2,000, so
# start-up and shutdown cancel out. Only processes started here are stopped, by PID; everything
# binds 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in valgrind nginx python3 curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ $# -gt 0 ] || set -- target/release/tandem
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
APP_PORT=${APP_PORT:-24700}
PROXY_PORT=${PROXY_PORT:-24710}
OTLP_PORT=${OTLP_PORT:-24720}
cat >"$W/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $W/nginx.pid;
error_log $W/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $W; proxy_temp_path $W; fastcgi_temp_path $W;
  uwsgi_temp_path $W; scgi_temp_path $W;
  server { listen 127.0.0.1:$APP_PORT; keepalive_requests 1000000; location / { return 200 "ok\n"; } }
  server { listen 127.0.0.1:$OTLP_PORT; client_max_body_size 64m; client_body_buffer_size 1m;
           location / { return 200 ""; } }
}
EOF
printf '[admin]\nlisten = ""\n' >"$W/tandem.toml"
if [ -n "${SAMPLER:-}" ]; then
  cat >>"$W/tandem.toml" <<EOF
[telemetry]
endpoint = "http://127.0.0.1:$OTLP_PORT"
protocol = "http/protobuf"
[telemetry.traces]
sampler = "parentbased_traceidratio"
sampler_ratio = $SAMPLER
[telemetry.logs]
enabled = false
EOF
fi
nginx -c "$W/nginx.conf" & NGINX=$!
trap 'kill "$NGINX" 2>/dev/null; rm -rf "$W"' EXIT

total() { # BINARY REQUESTS -> instructions of tandem's process
  local bin=$1 n=$2
  rm -f "$W"/cg.*
  valgrind --tool=callgrind --callgrind-out-file="$W/cg.%p" "$bin" \
    --config "$W/tandem.toml" --set runtime.worker_threads=1 --set proxy.access_log=false \
    --proxy "127.0.0.1:$PROXY_PORT=127.0.0.1:$APP_PORT" -- sleep 1000 >"$W/tandem.log" 2>&1 &
  local pid=$!
  for _ in $(seq 150); do
    curl -sf -o /dev/null "http://127.0.0.1:$PROXY_PORT/" && break
    sleep 0.2
  done
  python3 - "$n" "$PROXY_PORT" <<'PY'
import http.client, sys, threading
n, port = int(sys.argv[1]) // 4, int(sys.argv[2])
def run():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        c.request("GET", "/x")
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=run) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
PY
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  # tandem's own process is the largest profile (the guard and the app write their own)
  grep -E '^summary' "$(ls -S "$W"/cg.* | head -1)" | awk '{print $2}'
}

printf '| binary | instructions per request |\n|---|---:|\n'
for bin in "$@"; do
  small=$(total "$bin" 400)
  large=$(total "$bin" 2400)
  # KEEP_PROFILE=DIR: the 2,400-request run's profile, for callgrind_annotate
  if [ -n "${KEEP_PROFILE:-}" ]; then
    mkdir -p "$KEEP_PROFILE"
    cp "$(ls -S "$W"/cg.* | head -1)" "$KEEP_PROFILE/$(basename "$bin").callgrind"
  fi
  printf '| %s | %s |\n' "$bin" "$(( (large - small) / 2000 ))"
done
