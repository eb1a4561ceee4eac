#!/usr/bin/env bash
# Benchmark (not a test) of the log pipeline: lines/s and MB/s through capture -> frame ->
# parse -> enrich -> stdout sink (JSON lines, to /dev/null) and -> file sink (stdout sink off),
# for plain, JSON and realistic logfmt input (`2026-11-24T10:00:00Z INFO request handled
# path=/api/v1/items/123 status=200`: a timestamp, a level, the message and its pairs, all
# parsed), beside the raw pipe rate of the same data through `cat | cat > /dev/null`.
#
# Run with: bench/logs.sh [LINES]      (default 1,000,000; builds tandem --release first)
# Each number is the median of 3 interleaved runs; compare ratios, not absolutes.
# BENCH_TSV=FILE also appends machine-readable rows (bench/run.sh uses them).
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
with open(f"{work}/logfmt.txt", "w") as f:
    for i in range(n):
        s = i // 1000
        f.write(f"2026-11-24T{10 + s // 3600:02}:{s // 60 % 60:02}:{s % 60:02}Z INFO request handled "
                f"path=/api/v1/items/{100 + i % 900} status={200 if i % 50 else 503}\n")
cfg = f"{work}/tandem.toml"
with open(cfg, "w") as f:
    f.write('[admin]\nlisten = ""\n[logs.sinks.stdout]\nformat = "json"\n')
cfg_file = f"{work}/tandem-file.toml"
with open(cfg_file, "w") as f:
    f.write('[admin]\nlisten = ""\n[logs.sinks.stdout]\nenabled = false\n'
            f'[logs.sinks.file]\npath = "{work}/out.log"\nmax_size = "0B"\n')
tsv = open(os.environ["BENCH_TSV"], "a") if os.environ.get("BENCH_TSV") else None
env = dict(os.environ, TANDEM_LOG="warn")

def timed(cmd):
    t0 = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, env=env, check=True)
    return time.perf_counter() - t0

print(f"{n} lines each; medians of 3 interleaved runs")
for kind in ("plain", "json", "logfmt"):
    data = f"{work}/{kind}.txt"
    mb = os.path.getsize(data) / 1e6
    raw, tandem, tfile = [], [], []
    for _ in range(3):
        raw.append(timed(["sh", "-c", f"cat '{data}' | cat"]))
        tandem.append(timed([binary, "--config", cfg, "--", "cat", data]))
        tfile.append(timed([binary, "--config", cfg_file, "--", "cat", data]))
        os.remove(f"{work}/out.log")
    r, t, tf = statistics.median(raw), statistics.median(tandem), statistics.median(tfile)
    print(f"{kind:6} {mb:6.1f} MB | cat > /dev/null: {r:6.3f}s {n / r:11,.0f} lines/s {mb / r:7.1f} MB/s"
          f" | tandem: {t:6.3f}s {n / t:10,.0f} lines/s {mb / t:6.1f} MB/s ({t / r:.1f}x the raw pipe time)"
          f" | tandem file sink: {tf:6.3f}s {n / tf:10,.0f} lines/s {mb / tf:6.1f} MB/s")
    if tsv:
        for who, secs in (("cat", r), ("tandem_stdout", t), ("tandem_file", tf)):
            tsv.write(f"logs_{kind}\t{who}\tlines_per_s\t{n / secs:.0f}\n")
            tsv.write(f"logs_{kind}\t{who}\tmb_per_s\t{mb / secs:.1f}\n")
        tsv.write(f"logs_{kind}\tall\tline_bytes\t{os.path.getsize(data) / n:.0f}\n")
if tsv:
    tsv.close()
for name in os.listdir(work):
    os.remove(f"{work}/{name}")
os.rmdir(work)
PY
