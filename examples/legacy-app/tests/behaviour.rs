//! Black-box tests of the `legacy-app` binary: the behaviours tandem's own tests rely on
//! (graceful SIGTERM, crash code, hang, logs), checked on the real process over real sockets.
//!
//! Invariant: every wait has a deadline, every process is started here and ended by its own
//! pid (SIGKILL on drop if a test fails midway), and the app binds 127.0.0.1 on a free port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const DEADLINE: Duration = Duration::from_secs(20);

/// A running legacy-app with its output lines on channels.
struct App {
    child: Child,
    port: u16,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
}

impl App {
    fn start(extra: &[&str]) -> App {
        let mut child = Command::new(env!("CARGO_BIN_EXE_legacy-app"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn legacy-app");
        let stdout = lines(child.stdout.take().expect("piped stdout"));
        let stderr = lines(child.stderr.take().expect("piped stderr"));
        let mut app = App {
            child,
            port: 0,
            stdout,
            stderr,
        };
        let listening = app.wait_stdout(|l| l.contains("\"msg\":\"listening\""));
        app.port = listening
            .split("\"port\":")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse().ok())
            .expect("the listening line carries the port");
        app
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"))
    }

    fn signal(&self, sig: Signal) {
        kill(self.pid(), sig).expect("signal our own child");
    }

    /// The first stdout line matching `pred`, within the deadline.
    fn wait_stdout(&mut self, pred: impl Fn(&str) -> bool) -> String {
        wait_line(&self.stdout, pred)
    }

    fn wait_stderr(&mut self, pred: impl Fn(&str) -> bool) -> String {
        wait_line(&self.stderr, pred)
    }

    /// The exit status, if the process exits within `within`.
    fn exit_within(&mut self, within: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + within;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn get(&self, path: &str) -> std::io::Result<String> {
        request(
            self.port,
            &format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
        )
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(self.pid(), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

fn lines(stream: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn wait_line(rx: &Receiver<String>, pred: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + DEADLINE;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if pred(&line) => return line,
            Ok(_) => {}
            Err(e) => panic!("no matching line within {DEADLINE:?}: {e}"),
        }
    }
}

/// Sends `raw` and reads the whole response (the app closes after `Connection: close`).
fn request(port: u16, raw: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(raw.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[test]
fn sigterm_finishes_the_in_flight_request_then_exits_0() {
    let mut app = App::start(&[]);
    let port = app.port;
    let client = std::thread::spawn(move || {
        request(
            port,
            "GET /slow?ms=700 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
    });
    app.wait_stdout(|l| l.contains("slow request: sleeping 700ms"));
    app.signal(Signal::SIGTERM);
    app.wait_stdout(|l| l.contains("shutting down"));
    let response = client.join().expect("client thread").expect("a response");
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.ends_with("slept 700ms\n"), "{response}");
    let status = app.exit_within(DEADLINE).expect("exits after draining");
    assert_eq!(status.code(), Some(0));
    assert!(app.get("/").is_err(), "no longer listening");
}

#[test]
fn crash_exits_with_code_3_without_answering() {
    let mut app = App::start(&[]);
    let response = app.get("/crash").unwrap_or_default();
    assert!(response.is_empty(), "a crash does not answer: {response:?}");
    assert_eq!(app.exit_within(DEADLINE).expect("exits").code(), Some(3));
}

#[test]
fn crash_after_exits_with_code_3() {
    let mut app = App::start(&["--crash-after", "0.3"]);
    app.wait_stderr(|l| l.contains("crashing on purpose"));
    assert_eq!(app.exit_within(DEADLINE).expect("exits").code(), Some(3));
}

#[test]
fn hang_stops_answering_and_only_sigkill_ends_it() {
    let mut app = App::start(&[]);
    assert!(app
        .get("/health")
        .expect("healthy at first")
        .contains("200 OK"));
    assert!(
        app.get("/hang").is_err(),
        "/hang never answers (read times out)"
    );
    assert!(app.get("/health").is_err(), "nothing answers once hung");
    app.signal(Signal::SIGTERM);
    assert_eq!(
        app.exit_within(Duration::from_secs(1)),
        None,
        "SIGTERM is ignored"
    );
    app.signal(Signal::SIGKILL);
    let status = app.exit_within(DEADLINE).expect("SIGKILL ends it");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

#[test]
fn logs_json_access_lines_and_a_multiline_stack_trace() {
    let mut app = App::start(&[]);
    let response = app.get("/error").expect("a response");
    assert!(response.starts_with("HTTP/1.1 500"), "{response}");
    app.wait_stderr(|l| l.starts_with("Exception in thread"));
    let next = app.wait_stderr(|_| true);
    assert!(
        next.starts_with("\tat com.example"),
        "stack frame follows: {next:?}"
    );
    let access = app.wait_stdout(|l| l.contains("\"msg\":\"request\""));
    assert!(
        access.starts_with('{') && access.contains("\"status\":500"),
        "{access}"
    );
    let echoed = request(
        app.port,
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .expect("a response");
    assert!(echoed.ends_with("\r\n\r\nhello"), "{echoed}");
    app.signal(Signal::SIGTERM);
    assert_eq!(app.exit_within(DEADLINE).expect("exits").code(), Some(0));
}
