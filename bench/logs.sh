#!/usr/bin/env bash
# Benchmark (not a test) of the log pipeline: lines/s and MB/s through capture -> frame ->
# parse -> enrich -> stdout sink (JSON lines, to /dev/null), for plain and for JSON input,
# beside the raw pipe rate of the same data through `cat | cat > /dev/null`.
#
# Run with: bench/logs.sh [LINES]      (default 1,000,000; builds tandem --release first)
# Each number is the median of 3 interleaved runs; compare ratios, not absolutes.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p tandem
exec python3 - "${1:-1000000}" target/release/tandem <<'PY'
import json, os, statistics, subprocess, sys, tempfile, time

n, binary = int(sys.argv[1]), sys.argv[2]
work = tempfile.mkdtemp()
with open(f"{work}/plain.txt", "w") as f:
    for i in range(n):
        f.write(f"2024-05-01 12:00:00.123 GET /api/v1/users/{i} 200 3.2ms handled by worker {i % 8}\n")
with open(f"{work}/json.txt", "w") as f:
    for i in range(n):
        f.write(json.dumps({"ts": "2024-05-01T12:00:00.123Z", "level": "info", "msg": "request handled",
                            "path": f"/api/v1/users/{i}", "status": 200, "dur_ms": 3.2,
                            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"}, separators=(",", ":")) + "\n")
cfg = f"{work}/tandem.toml"
with open(cfg, "w") as f:
    f.write('[admin]\nlisten = ""\n[logs.sinks.stdout]\nformat = "json"\n')
env = dict(os.environ, TANDEM_LOG="warn")

def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - t0

print(f"{n} lines each; medians of 3 interleaved runs")
for kind in ("plain", "json"):
    data = f"{work}/{kind}.txt"
    mb = os.path.getsize(data) / 1e6
    raw, tandem = [], []
    for _ in range(3):
        raw.append(timed(["sh", "-c", f"cat '{data}' | cat"]))
        tandem.append(timed([binary, "--config", cfg, "--", "cat", data]))
    r, t = statistics.median(raw), statistics.median(tandem)
    print(f"{kind:5} {mb:6.1f} MB | cat > /dev/null: {r:6.3f}s {n / r:11,.0f} lines/s {mb / r:7.1f} MB/s"
          f" | tandem: {t:6.3f}s {n / t:10,.0f} lines/s {mb / t:6.1f} MB/s ({t / r:.1f}x the raw pipe time)")
for name in os.listdir(work):
    os.remove(f"{work}/{name}")
os.rmdir(work)
PY
