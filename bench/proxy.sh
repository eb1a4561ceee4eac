#!/usr/bin/env bash
# bench/proxy.sh: requests/s and p50/p99 latency of a direct connection to a tiny app versus
# the same app behind tandem-proxy (the standalone example), interleaved runs, medians, ratios,
# plus the proxy's idle and loaded RSS.
#
# Invariant: every target gets the same app, the same wrk settings and the same worker count
# (WORKERS, applied as TOKIO_WORKER_THREADS), and runs alternate (direct, tandem, direct, ...)
# so drift on a shared machine hits both alike. Envoy, nginx and HAProxy come in a later step.
#
# Usage: bench/proxy.sh            (RUNS=5 DURATION=10s CONNECTIONS=32 THREADS=1 WORKERS=1)
# Needs: wrk (Debian package `wrk`), cargo.
set -euo pipefail

RUNS=${RUNS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
WORKERS=${WORKERS:-1}
APP_PORT=${APP_PORT:-13000}
PROXY_PORT=${PROXY_PORT:-18080}

cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }
cargo build --release -q -p tandem-proxy --example standalone --example hello_app
BIN=target/release/examples

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "bench: port $1 never opened" >&2; exit 1
}

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

TOKIO_WORKER_THREADS=$WORKERS "$BIN/hello_app" "127.0.0.1:$APP_PORT" & pids+=($!)
wait_port "$APP_PORT"
TOKIO_WORKER_THREADS=$WORKERS "$BIN/standalone" "127.0.0.1:$PROXY_PORT=127.0.0.1:$APP_PORT" 2>/dev/null &
PROXY_PID=$!; pids+=($PROXY_PID)
wait_port "$PROXY_PORT"
sleep 0.5
IDLE_RSS=$(rss_kb "$PROXY_PID")

# One wrk run; prints "rps p50_ms p99_ms".
run() {
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$1/" | awk '
    function ms(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v }
      if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
      return v
    }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    $1 == "Requests/sec:" { rps = $2 }
    / Non-2xx or 3xx responses:/ { bad = $NF }
    /Socket errors:/ { errs = $0 }
    END {
      if (bad != "" || errs != "") print "bench: errors: " bad " " errs > "/dev/stderr"
      printf "%s %s %s\n", rps, p50, p99
    }'
}

median() { sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

declare -A results
for r in $(seq 1 "$RUNS"); do
  for target in direct tandem; do
    port=$APP_PORT; [ "$target" = tandem ] && port=$PROXY_PORT
    line=$(run "$port")
    echo "run $r $target: $line" >&2
    results[$target]+="$line"$'\n'
  done
done
LOADED_RSS=$(hwm_kb "$PROXY_PID")

col() { printf '%s' "${results[$1]}" | awk -v c="$2" 'NF {print $c}' | median; }
printf '\n%-8s %12s %10s %10s\n' target req/s p50_ms p99_ms
for target in direct tandem; do
  printf '%-8s %12.0f %10.3f %10.3f\n' "$target" "$(col $target 1)" "$(col $target 2)" "$(col $target 3)"
done
awk -v dr="$(col direct 1)" -v tr="$(col tandem 1)" -v d50="$(col direct 2)" -v t50="$(col tandem 2)" \
    -v d99="$(col direct 3)" -v t99="$(col tandem 3)" 'BEGIN {
  printf "\ntandem/direct: req/s %.2fx, p50 %.2fx, p99 %.2fx\n", tr / dr, t50 / d50, t99 / d99
}'
printf 'tandem-proxy RSS: idle %d KiB, peak under load %d KiB\n' "$IDLE_RSS" "$LOADED_RSS"
printf '(medians of %s interleaved runs; wrk -t%s -c%s -d%s; %s worker thread(s) each)\n' \
  "$RUNS" "$THREADS" "$CONNECTIONS" "$DURATION" "$WORKERS"
