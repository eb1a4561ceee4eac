//! `legacy-app`: a small "legacy" HTTP service for tandem's examples, demos and tests.
//!
//! Run with: `cargo run -p legacy-app -- --port 3000`, then `curl localhost:3000/`.
//!
//! It behaves like the services tandem is for: it logs plain and JSON lines to stdout and
//! stderr, starts slowly if told to, and can be made to crash, hang or stall on request.
//! Invariant: std only (plus signal-hook), so it builds fast and links statically for the
//! `FROM scratch` image; the process exit codes below are part of its contract.

mod http;
mod log;
mod routes;
mod server;
mod state;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;

use crate::log::{Field, Stream};
use crate::state::{HUNG, IN_FLIGHT, SHUTTING_DOWN};

/// Exit code for a bad command line (sysexits EX_USAGE).
const EXIT_USAGE: i32 = 64;
/// Exit code when the port cannot be bound or signals cannot be set up.
const EXIT_STARTUP: i32 = 1;

const HELP: &str = "\
legacy-app: a small HTTP service that misbehaves on demand (tandem's example app)

USAGE:
    legacy-app [OPTIONS]

OPTIONS:
    --port N             Port to listen on [env: PORT] [default: 3000]; 0 picks a free port
                         (the chosen port is logged)
    --host ADDR          Address to bind [env: HOST] [default: 127.0.0.1]
    --startup-delay MS   Wait MS milliseconds before binding (a slow start, for readiness)
    --crash-after SECS   Exit with code 3 after SECS seconds (fractions allowed)
    --log-file PATH      Append every log line (both streams) to PATH instead of stdout/stderr,
                         as many legacy services do [env: LOG_FILE]
    -h, --help           Print this help
    -V, --version        Print the version

ROUTES:
    GET  /               hello, with the pid
    GET  /health         200 ok
    GET  /slow?ms=N      answer after N ms (default 1000, at most 60000)
    POST /echo           echo the request body (Content-Length bodies up to 1 MiB)
    GET  /error          500, and a multi-line Java-style stack trace on stderr
    GET  /crash          exit at once with code 3, without answering
    GET  /hang           stop accepting and answering; ignore SIGTERM (only SIGKILL ends it)
    GET  /stall          stop reading connections and stop logging (still exits on SIGTERM)
    GET  /flood?lines=N  write N log lines to stdout as fast as possible (default 10000)
    GET  /orphan?ms=N    double-fork a child that exits after N ms, orphaned to PID 1

SIGNALS:
    SIGTERM, SIGINT      stop accepting, finish in-flight requests, log \"shutting down\", exit 0
    SIGHUP, SIGUSR1/2    logged (\"received SIGHUP\"), to show what a supervisor forwards

EXIT CODES:
    0 clean shutdown, 1 cannot start, 3 crash (/crash or --crash-after), 64 bad usage
";

/// The parsed command line.
#[derive(Debug)]
struct Options {
    host: IpAddr,
    port: u16,
    startup_delay: Duration,
    crash_after: Option<Duration>,
    log_file: Option<String>,
}

/// What the command line asks for.
enum Mode {
    Serve(Options),
    Help,
    Version,
    /// Hidden: the middle process of `/orphan`'s double fork.
    OrphanParent(u64),
    /// Hidden: the orphaned grandchild, which sleeps and exits.
    Sleep(u64),
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match parse_args(&args, |k| std::env::var(k).ok()) {
        Ok(mode) => mode,
        Err(msg) => {
            eprintln!("legacy-app: error: {msg}\ntry 'legacy-app --help'");
            std::process::exit(EXIT_USAGE);
        }
    };
    let opts = match mode {
        Mode::Help => {
            print!("{HELP}");
            return;
        }
        Mode::Version => {
            println!("legacy-app {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Mode::OrphanParent(ms) => std::process::exit(routes::orphan_parent(ms)),
        Mode::Sleep(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            return;
        }
        Mode::Serve(opts) => opts,
    };
    std::process::exit(run(opts));
}

/// The address the signal thread connects to, to wake the blocked accept loop.
static WAKE_ADDR: OnceLock<SocketAddr> = OnceLock::new();

fn run(opts: Options) -> i32 {
    let started = Instant::now();
    if let Some(path) = &opts.log_file {
        if let Err(e) = log::to_file(path) {
            eprintln!("legacy-app: cannot open log file {path}: {e}");
            return EXIT_STARTUP;
        }
    }
    log::plain(
        Stream::Stdout,
        "INFO",
        &format!(
            "legacy-app {} starting (pid {})",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        ),
    );
    // Signals first, so a SIGTERM during a slow start is a clean exit, not a default death.
    let signals = match Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2]) {
        Ok(s) => s,
        Err(e) => {
            log::plain(
                Stream::Stderr,
                "ERROR",
                &format!("cannot install signal handlers: {e}"),
            );
            return EXIT_STARTUP;
        }
    };
    std::thread::spawn(move || handle_signals(signals));
    if let Some(after) = opts.crash_after {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            log::plain(
                Stream::Stderr,
                "FATAL",
                "crashing on purpose (--crash-after)",
            );
            std::process::exit(routes::CRASH_EXIT_CODE);
        });
    }
    if !opts.startup_delay.is_zero() {
        log::plain(
            Stream::Stdout,
            "INFO",
            &format!("warming caches for {}ms", opts.startup_delay.as_millis()),
        );
        let until = Instant::now() + opts.startup_delay;
        while Instant::now() < until && !SHUTTING_DOWN.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        return 0;
    }
    let listener = match TcpListener::bind((opts.host, opts.port)) {
        Ok(l) => l,
        Err(e) => {
            log::plain(
                Stream::Stderr,
                "ERROR",
                &format!("cannot listen on {}:{}: {e}", opts.host, opts.port),
            );
            return EXIT_STARTUP;
        }
    };
    let local = listener
        .local_addr()
        .unwrap_or(SocketAddr::new(opts.host, opts.port));
    let wake = if local.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), local.port())
    } else {
        local
    };
    let _ = WAKE_ADDR.set(wake);
    log::json(
        Stream::Stdout,
        "info",
        "listening",
        &[
            ("addr", Field::Str(&local.to_string())),
            ("port", Field::Num(u64::from(local.port()))),
            ("pid", Field::Num(u64::from(std::process::id()))),
            (
                "startup_ms",
                Field::Num(started.elapsed().as_millis() as u64),
            ),
        ],
    );
    if SHUTTING_DOWN.load(Ordering::SeqCst) {
        return 0; // the signal came between the delay and the bind: nobody to wake
    }
    server::serve(&listener);
    drop(listener);
    IN_FLIGHT.wait_idle();
    log::json(
        Stream::Stdout,
        "info",
        "shutdown complete",
        &[("exit_code", Field::Num(0))],
    );
    0
}

/// The signal thread: stop on TERM/INT, log the others.
fn handle_signals(mut signals: Signals) {
    for sig in signals.forever() {
        match sig {
            SIGTERM | SIGINT => {
                if HUNG.load(Ordering::SeqCst) {
                    continue; // a hung process does not get to shut down cleanly
                }
                let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                log::plain(
                    Stream::Stdout,
                    "INFO",
                    &format!("received {name}, shutting down"),
                );
                if !SHUTTING_DOWN.swap(true, Ordering::SeqCst) {
                    if let Some(addr) = WAKE_ADDR.get() {
                        // Wake the accept loop; if this fails it wakes on the next client.
                        let _ = TcpStream::connect_timeout(addr, Duration::from_secs(1));
                    }
                }
            }
            SIGHUP => log::plain(
                Stream::Stdout,
                "INFO",
                "received SIGHUP: reloading configuration",
            ),
            SIGUSR1 => log::plain(Stream::Stdout, "INFO", "received SIGUSR1"),
            SIGUSR2 => log::plain(Stream::Stdout, "INFO", "received SIGUSR2"),
            _ => {}
        }
    }
}

/// Parses the command line; `env` looks up environment variables (injected for tests).
fn parse_args(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Mode, String> {
    let mut host = env("HOST");
    let mut port = env("PORT");
    let mut startup_delay = None;
    let mut crash_after = None;
    let mut log_file = env("LOG_FILE");
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag {
            "-h" | "--help" => return Ok(Mode::Help),
            "-V" | "--version" => return Ok(Mode::Version),
            "--port" => port = Some(value()?),
            "--host" => host = Some(value()?),
            "--startup-delay" => startup_delay = Some(value()?),
            "--crash-after" => crash_after = Some(value()?),
            "--log-file" => log_file = Some(value()?),
            "--orphan-parent" => return Ok(Mode::OrphanParent(parse_u64(flag, &value()?)?)),
            "--sleep-ms" => return Ok(Mode::Sleep(parse_u64(flag, &value()?)?)),
            other => return Err(format!("unexpected argument '{other}'")),
        }
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("invalid port '{p}': expected 0-65535"))?,
        None => 3000,
    };
    let host = match host {
        Some(h) => h
            .parse::<IpAddr>()
            .map_err(|_| format!("invalid host '{h}': expected an IP address"))?,
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let startup_delay = match startup_delay {
        Some(ms) => Duration::from_millis(parse_u64("--startup-delay", &ms)?),
        None => Duration::ZERO,
    };
    let crash_after = match crash_after {
        Some(secs) => match secs.parse::<f64>() {
            Ok(s) if s.is_finite() && (0.0..=1e9).contains(&s) => Some(Duration::from_secs_f64(s)),
            _ => return Err(format!("invalid --crash-after '{secs}': expected seconds")),
        },
        None => None,
    };
    Ok(Mode::Serve(Options {
        host,
        port,
        startup_delay,
        crash_after,
        log_file,
    }))
}

fn parse_u64(flag: &str, v: &str) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("invalid {flag} '{v}': expected a whole number"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn serve(list: &[&str], env: &[(&str, &str)]) -> Result<Options, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse_args(&args(list), |k| {
            env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        })? {
            Mode::Serve(o) => Ok(o),
            _ => Err("not serve".into()),
        }
    }

    #[test]
    fn flag_beats_env_and_env_beats_default() {
        assert_eq!(serve(&[], &[]).expect("defaults").port, 3000);
        assert_eq!(serve(&[], &[("PORT", "4000")]).expect("env").port, 4000);
        let o = serve(&["--port=5000"], &[("PORT", "4000")]).expect("flag");
        assert_eq!(o.port, 5000);
    }

    #[test]
    fn parses_delays() {
        let o = serve(&["--startup-delay", "250", "--crash-after", "1.5"], &[]).expect("valid");
        assert_eq!(o.startup_delay, Duration::from_millis(250));
        assert_eq!(o.crash_after, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(serve(&["--port", "70000"], &[]).is_err());
        assert!(serve(&["--port"], &[]).is_err());
        assert!(serve(&["--crash-after", "-1"], &[]).is_err());
        assert!(serve(&["--host", "localhost"], &[]).is_err());
        assert!(serve(&["--bogus"], &[]).is_err());
    }
}
