//! The log pipeline, end to end: real apps write to real pipes, tandem's stdout and files are
//! read back and every record is accounted for (issue 3, "What it must show").
use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::support::{bin, eventually, require_tool, Tandem};

/// Write a config file: `[admin]` off plus `extra` (TOML).
fn config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("tandem.toml");
    fs::write(&path, format!("[admin]\nlisten = \"\"\n{extra}")).unwrap();
    path
}

/// Run tandem with `cfg` over `app` to completion; return (exit code, stdout records).
fn run_logs(cfg: &Path, app: &[&str]) -> (i32, Vec<Value>) {
    let (code, records, _) = run_logs_full(cfg, app);
    (code, records)
}

/// [`run_logs`], also returning tandem's own events (stderr).
fn run_logs_full(cfg: &Path, app: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(bin())
        .arg("--config")
        .arg(cfg)
        .arg("--")
        .args(app)
        .env("TANDEM_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).expect("tandem's stdout is UTF-8 JSON lines");
    let records = stdout
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON record ({e}): {l:?}"))
        })
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let code = out
        .status
        .code()
        .unwrap_or_else(|| panic!("tandem killed: {stderr}"));
    (code, records, stderr)
}

/// Messages of records from `stream`.
fn msgs<'a>(records: &'a [Value], stream: &str) -> Vec<&'a str> {
    records
        .iter()
        .filter(|r| r["stream"] == stream)
        .map(|r| r["msg"].as_str().unwrap())
        .collect()
}

/// Check that `lines` (JSON records, any order of streams) hold exactly 1..=n of each
/// `(stream, n)`, once each, in order per stream. Parses only what it needs, for speed.
fn assert_numbered(lines: impl Iterator<Item = String>, want: &[(&str, u64)]) {
    let mut next: Vec<u64> = vec![1; want.len()];
    for line in lines {
        let r: Value = serde_json::from_str(&line).unwrap();
        let i = want
            .iter()
            .position(|(s, _)| r["stream"] == *s)
            .unwrap_or_else(|| panic!("unexpected record {line}"));
        let n: u64 = r["msg"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{line}"));
        assert_eq!(n, next[i], "{} line out of order or repeated", want[i].0);
        next[i] += 1;
    }
    for (i, (s, n)) in want.iter().enumerate() {
        assert_eq!(next[i] - 1, *n, "{s}: lines missing");
    }
}

#[test]
fn million_lines_reach_stdout_and_file_sinks_exactly_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("app.log");
    let cfg = config(
        dir.path(),
        &format!(
            "[logs.sinks.file]\npath = {:?}\nmax_size = \"4GiB\"\n",
            file.display()
        ),
    );
    // 1,000,000 lines on stdout and 100,000 on stderr at the same time, as fast as `seq` goes.
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .args(["--", "sh", "-c", "seq 1 100000 >&2 & seq 1 1000000; wait"])
        .env("TANDEM_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    assert_numbered(
        stdout.lines().map(Result::unwrap),
        &[("stdout", 1_000_000), ("stderr", 100_000)],
    );
    assert!(child.wait().unwrap().success());
    let file = BufReader::with_capacity(1 << 20, fs::File::open(&file).unwrap());
    assert_numbered(
        file.lines().map(Result::unwrap),
        &[("stdout", 1_000_000), ("stderr", 100_000)],
    );
}

/// Start tandem on an app that writes `n` lines and then creates `done`; nobody reads
/// tandem's stdout until the test says so.
fn unread(dir: &Path, backpressure: &str, n: u64) -> (Tandem, PathBuf) {
    let done = dir.join("done");
    let cfg = config(
        dir,
        &format!(
            "[logs]\nexit_timeout = \"60s\"\n[logs.sinks.stdout]\nbackpressure = \"{backpressure}\"\nqueue_records = 1024\n"
        ),
    );
    let script = format!("seq 1 {n}; touch {}", done.display());
    let t = Tandem::spawn(&["--config", cfg.to_str().unwrap(), "--", "sh", "-c", &script]);
    (t, done)
}

fn read_all(t: &mut Tandem) -> Vec<Value> {
    let mut s = String::new();
    t.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut s)
        .unwrap();
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The bytes written so far by the descendant of `root` named `name`, when it is blocked in a
/// pipe write (its wchan, from /proc).
fn blocked_writer(root: i32, name: &str) -> Option<u64> {
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim_end() == name {
            let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).ok()?;
            let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
            let written = io
                .lines()
                .find_map(|l| l.strip_prefix("wchar: "))?
                .trim()
                .parse()
                .ok()?;
            return wchan.contains("pipe_write").then_some(written);
        }
        todo.extend(crate::support::children(pid));
    }
    None
}

#[test]
fn drop_mode_never_makes_the_app_wait_and_accounts_for_every_line() {
    let n = 200_000;
    // block: while nobody reads tandem's stdout, the app cannot finish (it waits, no loss).
    let dir = tempfile::tempdir().unwrap();
    let (mut t, done) = unread(dir.path(), "block", n);
    // The event: `seq` sits in a pipe write and writes nothing more, poll after poll.
    let mut stuck = 0;
    let mut last = None;
    eventually("the app is blocked writing to its full pipe", || {
        let now = blocked_writer(t.child.id() as i32, "seq");
        stuck = if now.is_some() && now == last {
            stuck + 1
        } else {
            0
        };
        last = now;
        stuck >= 20
    });
    assert!(
        !done.exists(),
        "block mode: the app finished although nobody read its logs"
    );
    let records = read_all(&mut t);
    assert_eq!(t.wait_code(), 0);
    assert!(done.exists());
    assert_numbered(records.iter().map(|r| r.to_string()), &[("stdout", n)]);

    // drop: the app finishes although nobody reads; delivered + reported dropped = written.
    let dir = tempfile::tempdir().unwrap();
    let (mut t, done) = unread(dir.path(), "drop", n);
    eventually(
        "the app finishes in drop mode without anyone reading",
        || done.exists(),
    );
    let records = read_all(&mut t);
    assert_eq!(t.wait_code(), 0);
    let mut delivered = Vec::new();
    let mut dropped = 0;
    for r in &records {
        if let Some(d) = r["fields"]["tandem.dropped"].as_u64() {
            assert_eq!(r["level"], "WARN");
            assert!(r["fields"]["tandem.dropped_first"].is_string());
            dropped += d;
        } else {
            delivered.push(r["msg"].as_str().unwrap().parse::<u64>().unwrap());
        }
    }
    assert!(
        dropped > 0,
        "nothing was dropped: the test did not hold the sink"
    );
    assert_eq!(delivered.len() as u64 + dropped, n);
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "delivered lines keep their order"
    );
    let flushed = t.wait_event("logs_flushed");
    assert_eq!(flushed["dropped"].as_u64(), Some(dropped));
}

#[test]
fn ten_mib_line_without_newline_arrives_as_bounded_parts() {
    require_tool("python3");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let (code, records) = run_logs(
        &cfg,
        &[
            "python3",
            "-c",
            "import sys; sys.stdout.write('ok\\n' + 'x' * (10 * 1024 * 1024))",
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(records[0]["msg"], "ok");
    let parts = &records[1..];
    assert_eq!(
        parts.len(),
        160,
        "10 MiB in parts of max_line_bytes (64 KiB)"
    );
    let mut total = 0;
    for (i, p) in parts.iter().enumerate() {
        let msg = p["msg"].as_str().unwrap();
        assert!(msg.len() <= 64 * 1024 && msg.bytes().all(|b| b == b'x'));
        total += msg.len();
        assert_eq!(p["partial"]["index"], i);
        assert_eq!(p["partial"]["last"], i == parts.len() - 1);
    }
    assert_eq!(total, 10 * 1024 * 1024);
}

/// A 100 MiB line (the fault matrix's "writes a 100 MiB line"): delivered whole, in parts of
/// `max_line_bytes`, while tandem's peak memory stays far below the line's size (the framer
/// holds at most one part).
#[test]
fn hundred_mib_line_is_delivered_in_parts_with_bounded_memory() {
    require_tool("python3");
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    const SIZE: usize = 100 * 1024 * 1024;
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .args([
            "--",
            "python3",
            "-c",
            "import sys, time\nchunk = 'x' * (1024 * 1024)\nfor _ in range(100): sys.stdout.write(chunk)\nsys.stdout.write('\\nend\\n'); sys.stdout.flush(); time.sleep(3)",
        ])
        .env("TANDEM_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = BufReader::with_capacity(1 << 20, child.stdout.take().unwrap());
    let (mut parts, mut total, mut peak_kb) = (0usize, 0usize, 0u64);
    for line in stdout.lines() {
        let r: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let msg = r["msg"].as_str().unwrap();
        if msg == "end" {
            // tandem's peak RSS so far (VmHWM), read while it still runs.
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            peak_kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap();
            continue;
        }
        assert!(msg.len() <= 64 * 1024 && msg.bytes().all(|b| b == b'x'));
        assert_eq!(r["partial"]["index"], parts, "parts in order");
        parts += 1;
        total += msg.len();
    }
    assert!(child.wait().unwrap().success());
    assert_eq!(total, SIZE, "every byte of the line arrived");
    assert_eq!(parts, SIZE / (64 * 1024));
    assert!(peak_kb > 0, "the end marker arrived");
    assert!(
        peak_kb < 64 * 1024,
        "tandem's peak RSS was {peak_kb} kB for a 100 MiB line"
    );
}

const GO_PANIC: &str = "panic: runtime error: index out of range [5] with length 3\n\ngoroutine 1 [running]:\nmain.lookup(...)\n\t/app/main.go:8\nmain.main()\n\t/app/main.go:4 +0x1d\nexit status 2\n";

const PYTHON: &str = r#"
import sys
print("before python", flush=True)
def f():
    raise KeyError("first")
try:
    f()
except KeyError:
    raise ValueError("second")
"#;

#[test]
fn java_python_and_go_traces_arrive_as_one_record_each() {
    if !require_tool("java") || !require_tool("python3") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let java = dir.path().join("Trace.java");
    fs::write(
        &java,
        r#"public class Trace {
    static void inner() { throw new IllegalStateException("inner failure"); }
    static void outer() {
        try { inner(); } catch (IllegalStateException e) { throw new RuntimeException("outer failure", e); }
    }
    public static void main(String[] args) { System.out.println("before java"); outer(); }
}
"#,
    )
    .unwrap();
    let py = dir.path().join("trace.py");
    fs::write(&py, PYTHON).unwrap();
    let go = dir.path().join("go-panic.txt");
    fs::write(&go, GO_PANIC).unwrap();
    let cfg = config(dir.path(), "[logs.stderr.multiline]\npreset = \"traces\"\n");
    let script = format!(
        "java {} ; python3 {} ; echo before go; cat {} >&2; echo after >&2",
        java.display(),
        py.display(),
        go.display()
    );
    let (code, records) = run_logs(&cfg, &["sh", "-c", &script]);
    assert_eq!(code, 0);
    assert_eq!(
        msgs(&records, "stdout"),
        vec!["before java", "before python", "before go"]
    );
    let err = msgs(&records, "stderr");
    assert_eq!(err.len(), 4, "one record per trace, plus `after`: {err:#?}");

    let java = err[0];
    assert!(
        java.starts_with("Exception in thread \"main\" java.lang.RuntimeException: outer failure")
    );
    assert!(java.contains("\n\tat Trace.outer(Trace.java:4)"));
    assert!(java.contains("\nCaused by: java.lang.IllegalStateException: inner failure"));
    assert!(java.ends_with(')'), "{java}");

    let python = err[1];
    assert!(python.starts_with("Traceback (most recent call last):"));
    assert!(python.contains("KeyError: 'first'"));
    assert!(python.contains("During handling of the above exception, another exception occurred:"));
    assert!(python.ends_with("ValueError: second"), "{python}");

    assert_eq!(err[2], GO_PANIC.trim_end());
    assert_eq!(err[3], "after");
    let merged = records.iter().filter(|r| r["stream"] == "stderr").take(3);
    assert!(merged.clone().all(|r| r["lines"].as_u64().unwrap() > 3));
}

#[test]
fn json_and_logfmt_lines_keep_fields_and_levels() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "[logs.attributes]\nteam = \"payments\"\n");
    let script = r#"
echo '{"level":"error","msg":"db down","ts":"2024-05-01T12:00:00.5+02:00","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","db":{"host":"pg1"},"retries":3}'
echo 'time=2024-05-01T10:00:00Z level=debug msg="cache miss" key=user:7 took=3ms'
echo '{"level":"info", broken'
echo 'plain on stdout'
echo 'plain on stderr' >&2
echo '2026-11-24T10:00:00Z ERROR request failed path=/api/v1/items/123 status=503' >&2
"#;
    let (code, r) = run_logs(&cfg, &["sh", "-c", script]);
    assert_eq!(code, 0);
    assert_eq!(r.len(), 6);
    let json = r.iter().find(|r| r["msg"] == "db down").unwrap();
    assert_eq!(json["level"], "ERROR");
    assert_eq!(json["time"], "2024-05-01T10:00:00.500000Z");
    assert_eq!(json["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(json["span_id"], "00f067aa0ba902b7");
    assert_eq!(json["fields"]["db"]["host"], "pg1");
    assert_eq!(json["fields"]["retries"], 3);
    assert_eq!(json["service"], "sh");
    assert!(json["pid"].as_u64().unwrap() > 1);
    assert_eq!(json["restart"], 0);
    assert_eq!(json["resource"]["team"], "payments");

    let logfmt = r.iter().find(|r| r["msg"] == "cache miss").unwrap();
    assert_eq!(logfmt["level"], "DEBUG");
    assert_eq!(logfmt["time"], "2024-05-01T10:00:00.000000Z");
    assert_eq!(logfmt["fields"]["key"], "user:7");
    assert_eq!(logfmt["fields"]["took"], "3ms");

    // A timestamp and a level before the message, its pairs after (the default `auto`).
    let prefixed = r.iter().find(|r| r["msg"] == "request failed").unwrap();
    assert_eq!(prefixed["level"], "ERROR");
    assert_eq!(prefixed["time"], "2026-11-24T10:00:00.000000Z");
    assert_eq!(prefixed["fields"]["path"], "/api/v1/items/123");
    assert_eq!(prefixed["fields"]["status"], "503");

    let broken = r.iter().find(|r| r["parse_error"] == true).unwrap();
    assert_eq!(broken["msg"], "{\"level\":\"info\", broken");
    let out = r.iter().find(|r| r["msg"] == "plain on stdout").unwrap();
    assert_eq!(
        (&out["level"], &out["stream"]),
        (&Value::from("INFO"), &Value::from("stdout"))
    );
    let err = r.iter().find(|r| r["msg"] == "plain on stderr").unwrap();
    assert_eq!(
        (&err["level"], &err["stream"]),
        (&Value::from("WARN"), &Value::from("stderr"))
    );
}

#[test]
fn binary_garbage_does_not_crash_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let script =
        "head -c 2000000 /dev/urandom; printf '\\nstill here\\n'; head -c 100000 /dev/urandom >&2";
    let (code, records) = run_logs(&cfg, &["sh", "-c", script]);
    assert_eq!(code, 0);
    assert!(records.iter().any(|r| r["lossy"] == true));
    let out = msgs(&records, "stdout");
    assert_eq!(out.last(), Some(&"still here"));
    assert!(records.iter().any(|r| r["stream"] == "stderr"));
}

#[test]
fn file_sink_rotates_by_size_and_keeps_the_configured_count() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let cfg = config(
        dir.path(),
        &format!(
            "[logs.sinks.stdout]\nenabled = false\n[logs.sinks.file]\npath = {:?}\nmax_size = \"64KiB\"\nkeep = 3\n",
            log.display()
        ),
    );
    let (code, _) = run_logs(&cfg, &["seq", "1", "20000"]);
    assert_eq!(code, 0);
    let rotated = |n: usize| PathBuf::from(format!("{}.{n}", log.display()));
    assert!(!rotated(4).exists(), "only 3 rotated files are kept");
    let mut all = Vec::new();
    for p in [rotated(3), rotated(2), rotated(1), log.clone()] {
        let text = fs::read_to_string(&p).unwrap();
        assert!(
            text.len() <= 64 * 1024,
            "{} is larger than max_size",
            p.display()
        );
        all.extend(text.lines().map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["msg"].as_str().unwrap().parse::<u64>().unwrap()
        }));
    }
    // The kept files hold the newest lines, contiguous and in order, ending at the last one.
    let first = 20_000 - all.len() as u64 + 1;
    assert!(first > 1, "rotation must have dropped the oldest lines");
    assert_eq!(all, (first..=20_000).collect::<Vec<_>>());
}

#[test]
fn sighup_reopens_the_log_file_after_logrotate_moved_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let go = dir.path().join("go");
    let cfg = config(
        dir.path(),
        &format!("[logs.sinks.file]\npath = {:?}\n", log.display()),
    );
    // The app ignores the forwarded HUP and writes its second line when told to.
    let script = format!(
        "trap '' HUP; echo one; while [ ! -e {go} ]; do sleep 0.02; done; echo two",
        go = go.display()
    );
    let mut t = Tandem::spawn(&["--config", cfg.to_str().unwrap(), "--", "sh", "-c", &script]);
    eventually("first line in the file", || {
        fs::read_to_string(&log).is_ok_and(|s| s.contains("\"one\""))
    });
    let moved = dir.path().join("app.log.1");
    fs::rename(&log, &moved).unwrap();
    t.signal(Signal::SIGHUP);
    t.wait_event("signal_forwarded");
    fs::write(&go, "").unwrap();
    assert_eq!(t.wait_code(), 0);
    let read = |p: &Path| -> Vec<String> {
        fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["msg"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(read(&moved), vec!["one"]);
    assert_eq!(read(&log), vec!["two"]);
}

/// Appends numbered lines the way Nomad's log rotator does: `<base>.N`, a new N when
/// `max` bytes are reached, a line cut across two files where the limit falls.
struct NomadWriter {
    base: PathBuf,
    index: u64,
    max: u64,
    next: u64,
}

impl NomadWriter {
    fn write_lines(&mut self, n: u64) {
        let mut data = Vec::new();
        for _ in 0..n {
            self.next += 1;
            data.extend_from_slice(format!("{}\n", self.next).as_bytes());
        }
        let mut rest = &data[..];
        while !rest.is_empty() {
            let path = PathBuf::from(format!("{}.{}", self.base.display(), self.index));
            let size = fs::metadata(&path).map_or(0, |m| m.len());
            if size >= self.max {
                self.index += 1;
                continue;
            }
            let take = rest.len().min((self.max - size) as usize);
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            f.write_all(&rest[..take]).unwrap();
            rest = &rest[take..];
        }
    }
}

#[test]
fn tail_follows_nomad_rotation_across_a_tandem_restart_without_loss_or_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let logs = dir.path().join("alloc/logs");
    fs::create_dir_all(&logs).unwrap();
    let out = dir.path().join("out.log");
    let cfg = config(
        dir.path(),
        &format!(
            "[logs.sinks.stdout]\nenabled = false\n[logs.sinks.file]\npath = {out:?}\n[logs.tail]\npaths = [\"{}/web.stdout.*\"]\ncheckpoint = {:?}\npoll_interval = \"20ms\"\n",
            logs.display(),
            dir.path().join("tail.checkpoint").display()
        ),
    );
    let delivered = || -> Vec<u64> {
        fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            // The sink may be mid-write: a last line without its newline is not whole yet.
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| v["msg"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let wait_for =
        |n: usize| eventually(&format!("{n} lines delivered"), || delivered().len() >= n);
    let sidecar = || Tandem::spawn(&["--config", cfg.to_str().unwrap(), "--", "sleep", "600"]);
    let mut w = NomadWriter {
        base: logs.join("web.stdout"),
        index: 0,
        max: 4000,
        next: 0,
    };

    // Run 1: lines arrive while tandem follows, and rotate into new files mid-stream.
    let mut t = sidecar();
    w.write_lines(500);
    wait_for(500);
    w.write_lines(1500);
    wait_for(2000);
    t.signal(Signal::SIGTERM);
    t.wait();
    assert!(w.index >= 2, "the writer rotated mid-stream");

    // Between runs: more lines and rotations, and the oldest file deleted (max_files).
    w.write_lines(1000);
    fs::remove_file(logs.join("web.stdout.0")).unwrap();

    // Run 2 resumes from the checkpoint.
    let mut t = sidecar();
    wait_for(3000);
    w.write_lines(500);
    wait_for(3500);
    t.signal(Signal::SIGTERM);
    t.wait();
    assert_eq!(delivered(), (1..=3500).collect::<Vec<u64>>());
}

#[test]
fn records_name_each_restart_and_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "[restart]\npolicy = \"on-failure\"\ninitial_delay = \"10ms\"\nmax_delay = \"10ms\"\nstart_limit_burst = 3\n",
    );
    let (code, records) = run_logs(&cfg, &["sh", "-c", "echo run; exit 1"]);
    assert_eq!(code, 75, "start limit hit after 3 runs");
    let runs: Vec<(u64, u64)> = records
        .iter()
        .filter(|r| r["msg"] == "run")
        .map(|r| (r["restart"].as_u64().unwrap(), r["pid"].as_u64().unwrap()))
        .collect();
    assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2]);
    assert!(
        runs[0].1 != runs[1].1 && runs[1].1 != runs[2].1,
        "a new pid per run: {runs:?}"
    );
}

#[test]
fn exit_is_bounded_when_a_grandchild_holds_the_pipe_and_nothing_written_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("holder.pid");
    let cfg = config(dir.path(), "[logs]\nexit_timeout = \"300ms\"\n");
    // The holder leaves the app's process group (setsid), so tandem cannot kill it, and keeps
    // the app's stdout open; the app's last line has no newline.
    let script = format!(
        "setsid sh -c 'echo $$ > {p}; exec sleep 60' & while [ ! -s {p} ]; do sleep 0.01; done; echo last; printf unfinished",
        p = pidfile.display()
    );
    let (code, records, events) = run_logs_full(&cfg, &["sh", "-c", &script]);
    let holder: i32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(holder), Signal::SIGKILL);
    assert_eq!(code, 0);
    assert_eq!(msgs(&records, "stdout"), vec!["last", "unfinished"]);
    let flushed = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "logs_flushed")
        .expect("logs_flushed event");
    assert_eq!(
        flushed["eof"], false,
        "the holder kept the pipe open past the deadline"
    );
}
