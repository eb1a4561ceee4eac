//! Probes of the app: HTTP (GET a path, expect 2xx/3xx), TCP (connect), gRPC (the standard
//! `grpc.health.v1` check, expect SERVING: [`super::grpc`]) and exec (run a command, expect exit
//! 0), each bounded by a timeout, and the task that runs one on its interval and publishes its
//! thresholded state on a `watch` channel.
//!
//! Invariants: a probe never outlives its timeout (an exec probe's whole process group is
//! SIGKILLed when it overruns); the published [`ProbeState`] changes only after
//! `success_threshold` consecutive successes or `failure_threshold` consecutive failures, and
//! receivers are woken only on such a change. This module never calls `waitpid(-1)`: exec
//! probes learn their command's exit through an [`ExitWatcher`], because tandem's reaper owns
//! reaping.

use std::fmt;
use std::future::Future;
use std::io;
use std::num::NonZeroU32;
use std::os::unix::process::CommandExt;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time;

use super::grpc::{self, GrpcFailure};
use crate::http_get::{self, display_addr};

/// How long to wait for an exec probe's process to be reaped after SIGKILL; SIGKILL cannot be
/// caught, so only an unreapable process (stuck in the kernel) takes longer.
const KILL_REAP_GRACE: Duration = Duration::from_secs(5);

// === config ===

/// What a probe checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeKind {
    /// `GET` the target URL; 2xx and 3xx pass.
    Http,
    /// Open a TCP connection to the target `host:port`.
    Tcp,
    /// Call `grpc.health.v1.Health/Check` on the target `host:port` (h2c) or
    /// `host:port/service.Name`; SERVING passes.
    Grpc,
    /// Run the target command; exit 0 passes.
    Exec,
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProbeKind::Http => "http",
            ProbeKind::Tcp => "tcp",
            ProbeKind::Grpc => "grpc",
            ProbeKind::Exec => "exec",
        })
    }
}

/// A probe's target as written in config: a string, or (exec only) an argv array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetSpec {
    /// `http://127.0.0.1:3000/health`, `127.0.0.1:3000`, `127.0.0.1:50051/my.Service` (grpc),
    /// or a shell command line for exec
    /// (run with `/bin/sh -c`, like Docker's shell form).
    Line(String),
    /// An exec probe's argv, run without a shell (like Docker's exec form): the form to use in
    /// images that have no shell.
    Argv(Vec<String>),
}

/// One probe, as written in config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// What to check.
    pub kind: ProbeKind,
    /// Where or what: see [`TargetSpec`].
    pub target: TargetSpec,
    /// Time between the starts of two checks.
    #[serde(with = "tandem_proxy::duration", default = "default_interval")]
    pub interval: Duration,
    /// A check that takes longer fails.
    #[serde(with = "tandem_proxy::duration", default = "default_timeout")]
    pub timeout: Duration,
    /// Consecutive successes needed to become passing.
    #[serde(default = "default_success_threshold")]
    pub success_threshold: u32,
    /// Consecutive failures needed to become failing.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// Wait this long after the app is spawned before the first check.
    #[serde(with = "tandem_proxy::duration", default)]
    pub initial_delay: Duration,
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_success_threshold() -> u32 {
    1
}
fn default_failure_threshold() -> u32 {
    3
}

/// A probe config that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProbeConfigError {
    /// The target does not fit the kind.
    #[error("{kind} probe target {target:?}: {reason}")]
    Target {
        kind: ProbeKind,
        target: String,
        reason: &'static str,
    },
    /// A threshold of zero would make the state flip on nothing.
    #[error("probe {field} must be at least 1")]
    ZeroThreshold { field: &'static str },
    /// A zero interval or timeout.
    #[error("probe {field} must be greater than zero")]
    ZeroDuration { field: &'static str },
}

/// A validated probe: what [`ProbeConfig::validate`] returns and the runner takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The check itself.
    pub check: Check,
    /// Time between the starts of two checks.
    pub interval: Duration,
    /// Bound on one check.
    pub timeout: Duration,
    /// Consecutive successes needed to become passing.
    pub success_threshold: NonZeroU32,
    /// Consecutive failures needed to become failing.
    pub failure_threshold: NonZeroU32,
    /// Delay before the first check.
    pub initial_delay: Duration,
    /// Until the first pass after a spawn, check sooner than `interval`: first after
    /// [`FAST_START_FIRST`], each gap half as long again, up to `interval` (the implicit
    /// readiness probe: a request waits for the app no longer than it must).
    pub fast_start: bool,
}

/// The first gap of a fast-starting probe (see [`Probe::fast_start`]).
pub const FAST_START_FIRST: Duration = Duration::from_millis(10);

/// The interval of the implicit readiness probe once the app has passed it.
pub const IMPLICIT_INTERVAL: Duration = Duration::from_secs(1);

/// A validated check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `GET http://host:port/path`.
    Http {
        host: String,
        port: u16,
        path: String,
    },
    /// Connect to `host:port`.
    Tcp { host: String, port: u16 },
    /// Call the gRPC health service on `host:port` about `service` (empty: the whole server).
    Grpc {
        host: String,
        port: u16,
        service: String,
    },
    /// Connect to each `host:port`; passes when every one accepts (the implicit readiness
    /// probe of the proxy's upstreams).
    TcpEach(Vec<(String, u16)>),
    /// Run `program` with `args` in a process group of its own.
    Exec { program: String, args: Vec<String> },
}

// === impl ProbeConfig ===

impl ProbeConfig {
    /// Checks the config once, so the runner never sees an unusable target.
    pub fn validate(&self) -> Result<Probe, ProbeConfigError> {
        let bad = |target: &str, reason| ProbeConfigError::Target {
            kind: self.kind,
            target: target.to_string(),
            reason,
        };
        let check = match (&self.kind, &self.target) {
            (ProbeKind::Http, TargetSpec::Line(t)) => {
                let rest = match t.split_once("://") {
                    Some(("http", rest)) => rest,
                    Some(_) => return Err(bad(t, "only http:// URLs are supported")),
                    None => t.as_str(),
                };
                let (authority, path) = match rest.find('/') {
                    Some(i) => (&rest[..i], rest[i..].to_string()),
                    None => (rest, "/".to_string()),
                };
                if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad(
                        t,
                        "the path must not contain spaces or control characters",
                    ));
                }
                let (host, port) = split_host_port(authority, Some(80)).map_err(|r| bad(t, r))?;
                Check::Http { host, port, path }
            }
            (ProbeKind::Tcp, TargetSpec::Line(t)) => {
                let (host, port) = split_host_port(t, None).map_err(|r| bad(t, r))?;
                Check::Tcp { host, port }
            }
            (ProbeKind::Grpc, TargetSpec::Line(t)) => {
                if t.contains("://") {
                    return Err(bad(
                        t,
                        "a grpc target is host:port or host:port/service, no URL",
                    ));
                }
                let (authority, service) = t.split_once('/').unwrap_or((t.as_str(), ""));
                if service.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad(
                        t,
                        "the service name must not contain spaces or control characters",
                    ));
                }
                let (host, port) = split_host_port(authority, None).map_err(|r| bad(t, r))?;
                Check::Grpc {
                    host,
                    port,
                    service: service.to_string(),
                }
            }
            (ProbeKind::Exec, TargetSpec::Line(t)) => {
                if t.trim().is_empty() {
                    return Err(bad(t, "the command is empty"));
                }
                Check::Exec {
                    program: "/bin/sh".into(),
                    args: vec!["-c".into(), t.clone()],
                }
            }
            (ProbeKind::Exec, TargetSpec::Argv(argv)) => match argv.split_first() {
                Some((program, args)) if !program.is_empty() => Check::Exec {
                    program: program.clone(),
                    args: args.to_vec(),
                },
                _ => return Err(bad(&argv.join(" "), "the command is empty")),
            },
            (_, TargetSpec::Argv(argv)) => {
                return Err(bad(&argv.join(" "), "only exec probes take an array"))
            }
        };
        let nonzero =
            |v: u32, field| NonZeroU32::new(v).ok_or(ProbeConfigError::ZeroThreshold { field });
        for (d, field) in [(self.interval, "interval"), (self.timeout, "timeout")] {
            if d.is_zero() {
                return Err(ProbeConfigError::ZeroDuration { field });
            }
        }
        Ok(Probe {
            check,
            interval: self.interval,
            timeout: self.timeout,
            success_threshold: nonzero(self.success_threshold, "success_threshold")?,
            failure_threshold: nonzero(self.failure_threshold, "failure_threshold")?,
            initial_delay: self.initial_delay,
            fast_start: false,
        })
    }
}

// === impl Probe ===

impl Probe {
    /// The implicit readiness probe: every upstream (`host:port`) accepts a TCP connection.
    /// Checked every 10 ms after a spawn, backing off by half again up to 1 s; then every 1 s,
    /// failing after 3 refusals in a row. None when no upstream parses (the proxy's own
    /// validation reports those).
    pub fn implicit<'a>(upstreams: impl IntoIterator<Item = &'a str>) -> Option<Probe> {
        let mut targets: Vec<(String, u16)> = upstreams
            .into_iter()
            .filter_map(|u| split_host_port(u, None).ok())
            .collect();
        targets.sort();
        targets.dedup();
        if targets.is_empty() {
            return None;
        }
        Some(Self::tcp_each(targets))
    }

    /// A TCP connect to `host:port` (an IP, brackets allowed), paced as the implicit probe.
    pub fn tcp(host: &str, port: u16) -> Probe {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Self::tcp_each(vec![(host.to_string(), port)])
    }

    fn tcp_each(targets: Vec<(String, u16)>) -> Probe {
        Probe {
            check: Check::TcpEach(targets),
            interval: IMPLICIT_INTERVAL,
            timeout: Duration::from_secs(1),
            success_threshold: NonZeroU32::MIN,
            failure_threshold: NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN),
            initial_delay: Duration::ZERO,
            fast_start: true,
        }
    }

    /// The same probe aimed at port `to` wherever it checks port `from` (HTTP, TCP and gRPC
    /// targets; an exec probe is left as it is): a rolling restart's new app process.
    pub fn retarget(&self, from: u16, to: u16) -> Probe {
        let port = |p: u16| if p == from { to } else { p };
        let check = match &self.check {
            Check::Http {
                host,
                port: p,
                path,
            } => Check::Http {
                host: host.clone(),
                port: port(*p),
                path: path.clone(),
            },
            Check::Tcp { host, port: p } => Check::Tcp {
                host: host.clone(),
                port: port(*p),
            },
            Check::Grpc {
                host,
                port: p,
                service,
            } => Check::Grpc {
                host: host.clone(),
                port: port(*p),
                service: service.clone(),
            },
            Check::TcpEach(targets) => {
                let mut t: Vec<(String, u16)> =
                    targets.iter().map(|(h, p)| (h.clone(), port(*p))).collect();
                t.sort();
                t.dedup();
                Check::TcpEach(t)
            }
            exec @ Check::Exec { .. } => exec.clone(),
        };
        Probe {
            check,
            ..self.clone()
        }
    }

    /// The gap before the check after one that took place with `gap` before it; `passed`:
    /// the probe has passed since the app was spawned.
    fn next_gap(&self, gap: Duration, passed: bool) -> Duration {
        if self.fast_start && !passed {
            (gap + gap / 2).min(self.interval)
        } else {
            self.interval
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.check {
            Check::Http { host, port, path } => {
                write!(f, "http GET http://{}{path}", display_addr(host, *port))?
            }
            Check::Tcp { host, port } => write!(f, "tcp {}", display_addr(host, *port))?,
            Check::Grpc {
                host,
                port,
                service,
            } => {
                write!(f, "grpc {}", display_addr(host, *port))?;
                if !service.is_empty() {
                    write!(f, " service={service}")?;
                }
            }
            Check::TcpEach(targets) => {
                let all: Vec<String> = targets.iter().map(|(h, p)| display_addr(h, *p)).collect();
                write!(f, "tcp {}", all.join(" and "))?
            }
            Check::Exec { program, args } => write!(f, "exec {program} {}", args.join(" "))?,
        }
        if self.fast_start {
            write!(
                f,
                ", every {} after each spawn backing off to {}, then every {}",
                humantime::format_duration(FAST_START_FIRST),
                humantime::format_duration(self.interval),
                humantime::format_duration(self.interval)
            )?;
        } else {
            write!(f, ", every {}", humantime::format_duration(self.interval))?;
        }
        write!(
            f,
            ", timeout {}, failing after {}",
            humantime::format_duration(self.timeout),
            self.failure_threshold
        )
    }
}

/// Splits `host:port` (`[v6]:port` too); `default_port` applies when there is no `:port`.
fn split_host_port(s: &str, default_port: Option<u16>) -> Result<(String, u16), &'static str> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or("unclosed '[' in the address")?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or("expected ':port' after ']'")?),
            ),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err("IPv6 addresses need brackets: [::1]:3000")
            }
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("the host is empty");
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| "the port is not a number in 1-65535")?,
        None => default_port.ok_or("a port is required: host:port")?,
    };
    if port == 0 {
        return Err("the port is not a number in 1-65535");
    }
    Ok((host.to_string(), port))
}

// === checks ===

/// Why one check failed.
#[derive(Debug, Error)]
pub enum ProbeFailure {
    /// The check did not finish within the probe's timeout.
    #[error("timed out after {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// No TCP connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    /// The HTTP exchange broke, or the answer was not HTTP.
    #[error(transparent)]
    Http(http_get::GetError),
    /// The gRPC health check did not say SERVING, or its exchange broke.
    #[error(transparent)]
    Grpc(#[from] GrpcFailure),
    /// An HTTP status outside 2xx/3xx.
    #[error("HTTP {status} from {addr}")]
    Status { addr: String, status: u16 },
    /// The exec probe's command could not be started.
    #[error("cannot run {program:?}: {source}")]
    Spawn { program: String, source: io::Error },
    /// The exec probe's command exited non-zero (128+N: killed by signal N).
    #[error("{program:?} exited with code {code}")]
    Exit { program: String, code: i32 },
    /// The exit status of the exec probe's command was lost.
    #[error("exit status of {program:?} (pid {pid}) is unknown")]
    StatusLost { program: String, pid: u32 },
}

/// How an exec probe learns that its command exited.
///
/// tandem's reaper is the only caller of `waitpid` (it reaps every child as PID 1 or
/// subreaper), so the lifecycle passes an adapter over the reaper's per-pid watch. Standalone
/// use and tests, where nothing else reaps, use [`WaitPid`].
pub trait ExitWatcher: Send + Sync + 'static {
    /// Resolves with `pid`'s exit code (128+N when signal N killed it), or `None` if its
    /// status was lost. `pid` is a child of this process that has not been reaped yet.
    fn exited(&self, pid: u32) -> Pin<Box<dyn Future<Output = Option<i32>> + Send>>;

    /// Starts the probe's command: tandem's reaper holds its spawn lock meanwhile (see
    /// `child::reap::Reaper::spawn_command`).
    fn spawn(&self, cmd: &mut Command) -> std::io::Result<std::process::Child> {
        cmd.spawn()
    }
}

/// An [`ExitWatcher`] that calls `waitpid(pid)` itself, on the blocking pool.
#[derive(Debug, Clone, Copy, Default)]
pub struct WaitPid;

impl ExitWatcher for WaitPid {
    fn exited(&self, pid: u32) -> Pin<Box<dyn Future<Output = Option<i32>> + Send>> {
        Box::pin(async move {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).ok()?);
            let status =
                tokio::task::spawn_blocking(move || nix::sys::wait::waitpid(pid, None)).await;
            match status {
                Ok(Ok(nix::sys::wait::WaitStatus::Exited(_, code))) => Some(code),
                Ok(Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _))) => Some(128 + sig as i32),
                _ => None,
            }
        })
    }
}

impl Probe {
    /// Runs one check, bounded by the probe's timeout.
    pub async fn check(&self, exits: &dyn ExitWatcher) -> Result<(), ProbeFailure> {
        match &self.check {
            Check::Http { host, port, path } => http_check(host, *port, path, self.timeout).await,
            Check::Tcp { host, port } => bounded(self.timeout, tcp_check(host, *port)).await,
            Check::Grpc {
                host,
                port,
                service,
            } => bounded(self.timeout, grpc_check(host, *port, service)).await,
            Check::TcpEach(targets) => {
                bounded(self.timeout, async {
                    for (host, port) in targets {
                        tcp_check(host, *port).await?;
                    }
                    Ok(())
                })
                .await
            }
            Check::Exec { program, args } => exec_check(program, args, self.timeout, exits).await,
        }
    }
}

async fn bounded(
    timeout: Duration,
    check: impl Future<Output = Result<(), ProbeFailure>>,
) -> Result<(), ProbeFailure> {
    time::timeout(timeout, check)
        .await
        .unwrap_or(Err(ProbeFailure::Timeout(timeout)))
}

async fn tcp_check(host: &str, port: u16) -> Result<(), ProbeFailure> {
    TcpStream::connect((host, port))
        .await
        .map(drop)
        .map_err(|source| ProbeFailure::Connect {
            addr: display_addr(host, port),
            source,
        })
}

async fn grpc_check(host: &str, port: u16, service: &str) -> Result<(), ProbeFailure> {
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| ProbeFailure::Connect {
            addr: display_addr(host, port),
            source,
        })?;
    Ok(grpc::check(tcp, host, port, service).await?)
}

async fn http_check(
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<(), ProbeFailure> {
    let req = http_get::Get {
        host,
        port,
        path,
        user_agent: "tandem-probe",
        timeout,
    };
    let status = http_get::get(req, http_get::Read::Status).await?.status;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(ProbeFailure::Status {
            addr: display_addr(host, port),
            status,
        })
    }
}

impl From<http_get::GetError> for ProbeFailure {
    fn from(e: http_get::GetError) -> Self {
        use http_get::GetError;
        match e {
            GetError::Timeout(t) => ProbeFailure::Timeout(t),
            GetError::Connect { addr, source } => ProbeFailure::Connect { addr, source },
            other => ProbeFailure::Http(other),
        }
    }
}

async fn exec_check(
    program: &str,
    args: &[String],
    timeout: Duration,
    exits: &dyn ExitWatcher,
) -> Result<(), ProbeFailure> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // The probe is not the service: it must not talk to systemd on tandem's behalf.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        // Its own group, so a timeout kills whatever the command started too.
        .process_group(0);
    let child = exits
        .spawn(&mut cmd)
        .map_err(|source| ProbeFailure::Spawn {
            program: program.to_string(),
            source,
        })?;
    let pid = child.id();
    // Dropping a std Child neither waits nor kills: the watcher owns its exit from here on,
    // and the guard kills the group if this future is dropped (probe stopped) before that.
    drop(child);
    let mut group = GroupGuard(Some(pid));
    let mut exited = exits.exited(pid);
    let code = match time::timeout(timeout, &mut exited).await {
        Ok(code) => code,
        Err(_) => {
            group.kill();
            // Reap it, so a timed-out probe never leaves a zombie behind.
            let _ = time::timeout(KILL_REAP_GRACE, exited).await;
            group.disarm();
            return Err(ProbeFailure::Timeout(timeout));
        }
    };
    group.disarm();
    match code {
        Some(0) => Ok(()),
        Some(code) => Err(ProbeFailure::Exit {
            program: program.to_string(),
            code,
        }),
        None => Err(ProbeFailure::StatusLost {
            program: program.to_string(),
            pid,
        }),
    }
}

/// SIGKILLs an exec probe's process group when dropped while armed.
///
/// Armed only until the exit watcher reports the command's exit: before that the command is
/// not reaped, so its pid, which is also its group id, cannot have been reused by a stranger.
struct GroupGuard(Option<u32>);

impl GroupGuard {
    fn kill(&self) {
        if let Some(raw) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            // ESRCH (the group is already gone) is fine: the goal is that it is gone.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(raw),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

// === state ===

/// A probe's thresholded verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeState {
    /// No verdict yet: fewer than the threshold of either outcome since the probe started.
    Pending,
    /// `success_threshold` consecutive successes, and not failing since.
    Passing,
    /// `failure_threshold` consecutive failures, and not passing since.
    Failing,
}

/// What a probe task publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeStatus {
    /// The thresholded verdict.
    pub state: ProbeState,
    /// Successes in a row, up to now.
    pub consecutive_successes: u32,
    /// Failures in a row, up to now.
    pub consecutive_failures: u32,
    /// The most recent failure, for `/status` and logs.
    pub last_failure: Option<String>,
    /// Checks run so far.
    pub checks: u64,
}

impl Default for ProbeStatus {
    fn default() -> Self {
        ProbeStatus {
            state: ProbeState::Pending,
            consecutive_successes: 0,
            consecutive_failures: 0,
            last_failure: None,
            checks: 0,
        }
    }
}

// === impl ProbeStatus ===

impl ProbeStatus {
    /// Records one check's outcome; returns whether [`ProbeStatus::state`] changed.
    pub fn record(
        &mut self,
        outcome: Result<(), String>,
        success_threshold: NonZeroU32,
        failure_threshold: NonZeroU32,
    ) -> bool {
        self.checks = self.checks.saturating_add(1);
        let before = self.state;
        match outcome {
            Ok(()) => {
                self.consecutive_failures = 0;
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                if self.consecutive_successes >= success_threshold.get() {
                    self.state = ProbeState::Passing;
                }
            }
            Err(why) => {
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.last_failure = Some(why);
                if self.consecutive_failures >= failure_threshold.get() {
                    self.state = ProbeState::Failing;
                }
            }
        }
        self.state != before
    }
}

// === runner ===

/// A running probe task; dropping the handle stops it.
#[derive(Debug)]
pub struct ProbeHandle {
    status: watch::Receiver<ProbeStatus>,
    task: JoinHandle<()>,
}

impl ProbeHandle {
    /// A receiver woken on every change of [`ProbeState`]; `borrow()` also shows the counters
    /// and last failure as of the latest check.
    pub fn subscribe(&self) -> watch::Receiver<ProbeStatus> {
        self.status.clone()
    }

    /// The status as of the latest check.
    pub fn status(&self) -> ProbeStatus {
        self.status.borrow().clone()
    }
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts `probe` on its interval in a new task. `name` ("readiness", "liveness") labels logs.
pub fn spawn(name: &'static str, probe: Probe, exits: Arc<dyn ExitWatcher>) -> ProbeHandle {
    let (tx, status) = watch::channel(ProbeStatus::default());
    let task = tokio::spawn(run(name, probe, exits, tx));
    ProbeHandle { status, task }
}

/// Runs `probe` until every receiver of `tx` is gone: waits `initial_delay`, then checks once
/// per `interval` (a slow check delays the next one rather than overlapping it).
pub async fn run(
    name: &'static str,
    probe: Probe,
    exits: Arc<dyn ExitWatcher>,
    tx: watch::Sender<ProbeStatus>,
) {
    let mut next = time::Instant::now() + probe.initial_delay;
    let mut gap = if probe.fast_start {
        FAST_START_FIRST
    } else {
        probe.interval
    };
    let mut passed = false;
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = time::sleep_until(next) => {}
        }
        // From start to start: a slow check delays the next one rather than overlapping it.
        next = time::Instant::now() + gap;
        let outcome = tokio::select! {
            _ = tx.closed() => return,
            outcome = probe.check(exits.as_ref()) => outcome,
        };
        let outcome = outcome.map_err(|e| e.to_string());
        let mut state = ProbeState::Pending;
        let changed = tx.send_if_modified(|s| {
            let changed = s.record(
                outcome.clone(),
                probe.success_threshold,
                probe.failure_threshold,
            );
            state = s.state;
            changed
        });
        passed |= state == ProbeState::Passing;
        gap = probe.next_gap(gap, passed);
        if changed {
            match (&state, &outcome) {
                (ProbeState::Failing, Err(why)) => {
                    tracing::warn!(probe = name, failure = %why, "probe failing")
                }
                _ => tracing::info!(probe = name, state = ?state, "probe state changed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener as StdListener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn config(kind: ProbeKind, target: &str) -> ProbeConfig {
        ProbeConfig {
            kind,
            target: TargetSpec::Line(target.into()),
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            success_threshold: 1,
            failure_threshold: 1,
            initial_delay: Duration::ZERO,
        }
    }

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("test thresholds are non-zero")
    }

    /// A port on 127.0.0.1 with nothing listening (bound, read, released).
    fn closed_port() -> u16 {
        let l = StdListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        l.local_addr().expect("local addr").port()
    }

    /// Serves one HTTP response per connection with the given raw status line, forever.
    async fn http_server(status_line: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let resp = format!("{status_line}\r\ncontent-length: 0\r\n\r\n");
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        port
    }

    #[test]
    fn config_parses_from_toml_with_defaults_and_rejects_unknown_keys() {
        let c: ProbeConfig = toml::from_str(
            "kind = \"http\"\ntarget = \"http://127.0.0.1:3000/health\"\ninterval = \"250ms\"",
        )
        .expect("valid probe config");
        assert_eq!(c.interval, Duration::from_millis(250));
        assert_eq!(c.timeout, default_timeout());
        assert_eq!(c.failure_threshold, 3);
        let p = c.validate().expect("valid");
        assert_eq!(
            p.check,
            Check::Http {
                host: "127.0.0.1".into(),
                port: 3000,
                path: "/health".into()
            }
        );
        let err =
            toml::from_str::<ProbeConfig>("kind = \"tcp\"\ntarget = \"a:1\"\nperiod = \"1s\"")
                .expect_err("unknown key");
        assert!(err.to_string().contains("period"), "{err}");
        let argv: ProbeConfig =
            toml::from_str("kind = \"exec\"\ntarget = [\"/bin/check\", \"-q\"]").expect("argv");
        assert_eq!(
            argv.validate().expect("valid").check,
            Check::Exec {
                program: "/bin/check".into(),
                args: vec!["-q".into()]
            }
        );
    }

    #[test]
    fn validate_rejects_unusable_targets_and_thresholds() {
        for (kind, target) in [
            (ProbeKind::Http, "https://127.0.0.1/x"),
            (ProbeKind::Http, "127.0.0.1:notaport/x"),
            (ProbeKind::Tcp, "127.0.0.1"),
            (ProbeKind::Tcp, "::1:80"),
            (ProbeKind::Tcp, ":80"),
            (ProbeKind::Exec, "   "),
        ] {
            assert!(
                matches!(
                    config(kind, target).validate(),
                    Err(ProbeConfigError::Target { .. })
                ),
                "{kind} {target:?} should be rejected"
            );
        }
        let mut c = config(ProbeKind::Tcp, "[::1]:80");
        assert!(c.validate().is_ok());
        c.failure_threshold = 0;
        assert_eq!(
            c.validate(),
            Err(ProbeConfigError::ZeroThreshold {
                field: "failure_threshold"
            })
        );
        let mut c = config(ProbeKind::Http, "127.0.0.1");
        assert!(c.validate().is_ok(), "http defaults to port 80 and path /");
        c.timeout = Duration::ZERO;
        assert_eq!(
            c.validate(),
            Err(ProbeConfigError::ZeroDuration { field: "timeout" })
        );
    }

    #[test]
    fn grpc_targets_are_host_port_with_an_optional_service() {
        let check = |t: &str| config(ProbeKind::Grpc, t).validate().map(|p| p.check);
        assert_eq!(
            check("127.0.0.1:50051"),
            Ok(Check::Grpc {
                host: "127.0.0.1".into(),
                port: 50051,
                service: String::new()
            })
        );
        assert_eq!(
            check("[::1]:50051/svc"),
            Ok(Check::Grpc {
                host: "::1".into(),
                port: 50051,
                service: "svc".into()
            })
        );
        assert_eq!(
            check("localhost:9000/grpc.health.v1.Health"),
            Ok(Check::Grpc {
                host: "localhost".into(),
                port: 9000,
                service: "grpc.health.v1.Health".into()
            })
        );
        for bad in [
            "127.0.0.1",
            "http://x:1",
            "127.0.0.1/svc",
            ":50051",
            "127.0.0.1:0",
            "::1:50051",
            "127.0.0.1:50051/a b",
        ] {
            assert!(
                matches!(
                    check(bad),
                    Err(ProbeConfigError::Target {
                        kind: ProbeKind::Grpc,
                        ..
                    })
                ),
                "{bad:?} should be rejected: {:?}",
                check(bad)
            );
        }
        let argv = ProbeConfig {
            target: TargetSpec::Argv(vec!["127.0.0.1:1".into()]),
            ..config(ProbeKind::Grpc, "")
        };
        assert!(argv.validate().is_err(), "only exec probes take an array");
        let c: ProbeConfig = toml::from_str("kind = \"grpc\"\ntarget = \"127.0.0.1:50051/foo\"")
            .expect("grpc is a kind");
        let p = c.validate().expect("valid");
        assert!(
            p.to_string()
                .starts_with("grpc 127.0.0.1:50051 service=foo, every 2s"),
            "{p}"
        );
        let moved = p.retarget(50051, 50052);
        assert_eq!(
            moved.check,
            Check::Grpc {
                host: "127.0.0.1".into(),
                port: 50052,
                service: "foo".into()
            }
        );
        assert_eq!(moved.retarget(1, 2), moved, "other ports are left alone");
        let whole = config(ProbeKind::Grpc, "[::1]:7")
            .validate()
            .expect("valid");
        assert!(
            whole.to_string().starts_with("grpc [::1]:7, every"),
            "{whole}"
        );
    }

    #[test]
    fn thresholds_gate_state_changes() {
        let mut s = ProbeStatus::default();
        let fail = || Err("boom".to_string());
        assert!(!s.record(Ok(()), nz(2), nz(3)), "one success of two");
        assert!(s.record(Ok(()), nz(2), nz(3)));
        assert_eq!(s.state, ProbeState::Passing);
        assert!(!s.record(fail(), nz(2), nz(3)));
        assert!(!s.record(fail(), nz(2), nz(3)));
        assert!(
            !s.record(Ok(()), nz(2), nz(3)),
            "a success resets the failure run"
        );
        assert!(!s.record(fail(), nz(2), nz(3)));
        assert!(!s.record(fail(), nz(2), nz(3)));
        assert!(s.record(fail(), nz(2), nz(3)));
        assert_eq!(s.state, ProbeState::Failing);
        assert_eq!(s.last_failure.as_deref(), Some("boom"));
        assert_eq!(s.checks, 8);
    }

    #[tokio::test]
    async fn http_probe_passes_on_2xx_3xx_and_fails_on_5xx() {
        for (line, ok) in [
            ("HTTP/1.1 200 OK", true),
            ("HTTP/1.1 301 Moved Permanently", true),
            ("HTTP/1.1 503 Service Unavailable", false),
        ] {
            let port = http_server(line).await;
            let probe = config(ProbeKind::Http, &format!("127.0.0.1:{port}/health"))
                .validate()
                .expect("valid");
            let result = probe.check(&WaitPid).await;
            assert_eq!(result.is_ok(), ok, "{line}: {result:?}");
            if !ok {
                assert!(matches!(
                    result,
                    Err(ProbeFailure::Status { status: 503, .. })
                ));
            }
        }
    }

    #[tokio::test]
    async fn http_probe_times_out_on_a_silent_server() {
        // Accepts (via the backlog) but never answers: a hung app.
        let silent = StdListener::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let mut c = config(ProbeKind::Http, &format!("127.0.0.1:{port}/"));
        c.timeout = Duration::from_millis(200);
        let result = c.validate().expect("valid").check(&WaitPid).await;
        assert!(
            matches!(result, Err(ProbeFailure::Timeout(_))),
            "{result:?}"
        );
        drop(silent);
    }

    #[tokio::test]
    async fn tcp_probe_passes_on_listener_and_fails_on_closed_port() {
        let open = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = open.local_addr().expect("addr").port();
        let ok = config(ProbeKind::Tcp, &format!("127.0.0.1:{port}"))
            .validate()
            .expect("valid");
        assert!(ok.check(&WaitPid).await.is_ok());
        let closed = config(ProbeKind::Tcp, &format!("127.0.0.1:{}", closed_port()))
            .validate()
            .expect("valid");
        assert!(matches!(
            closed.check(&WaitPid).await,
            Err(ProbeFailure::Connect { .. })
        ));
    }

    #[tokio::test]
    async fn grpc_probe_is_bounded_by_its_timeout_and_reports_refused_connections() {
        // Accepts (via the backlog) but never answers, not even the HTTP/2 handshake.
        let silent = StdListener::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let mut c = config(ProbeKind::Grpc, &format!("127.0.0.1:{port}/svc"));
        c.timeout = Duration::from_millis(200);
        let result = c.validate().expect("valid").check(&WaitPid).await;
        assert!(
            matches!(result, Err(ProbeFailure::Timeout(_))),
            "{result:?}"
        );
        drop(silent);
        let closed = config(ProbeKind::Grpc, &format!("127.0.0.1:{}", closed_port()))
            .validate()
            .expect("valid");
        assert!(matches!(
            closed.check(&WaitPid).await,
            Err(ProbeFailure::Connect { .. })
        ));
    }

    #[tokio::test]
    async fn exec_probe_reports_exit_codes() {
        let ok = config(ProbeKind::Exec, "exit 0").validate().expect("valid");
        assert!(ok.check(&WaitPid).await.is_ok());
        let bad = config(ProbeKind::Exec, "exit 7").validate().expect("valid");
        assert!(matches!(
            bad.check(&WaitPid).await,
            Err(ProbeFailure::Exit { code: 7, .. })
        ));
        let missing = ProbeConfig {
            target: TargetSpec::Argv(vec!["/nonexistent/tandem-probe".into()]),
            ..config(ProbeKind::Exec, "")
        };
        assert!(matches!(
            missing.validate().expect("valid").check(&WaitPid).await,
            Err(ProbeFailure::Spawn { .. })
        ));
    }

    #[tokio::test]
    async fn exec_probe_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("grandchild.pid");
        // The shell starts a grandchild in its group, records its pid, and waits on it.
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let mut c = config(ProbeKind::Exec, &script);
        c.timeout = Duration::from_millis(300);
        let result = c.validate().expect("valid").check(&WaitPid).await;
        assert!(
            matches!(result, Err(ProbeFailure::Timeout(_))),
            "{result:?}"
        );
        let grandchild: i32 = std::fs::read_to_string(&pidfile)
            .expect("the script wrote the grandchild's pid before the timeout")
            .trim()
            .parse()
            .expect("a pid");
        assert_ends(grandchild).await;
    }

    #[tokio::test]
    async fn stopping_a_probe_mid_exec_kills_its_process_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let mut c = config(ProbeKind::Exec, &script);
        c.timeout = Duration::from_secs(600);
        let handle = spawn("liveness", c.validate().expect("valid"), Arc::new(WaitPid));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let grandchild: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the probe never started"
            );
            time::sleep(Duration::from_millis(20)).await;
        };
        drop(handle);
        assert_ends(grandchild).await;
    }

    /// Waits (at most 10s) until `pid` is gone from /proc or a zombie; never still running.
    /// The orphaned grandchild is re-parented to init or a subreaper, which may or may not
    /// reap it, so a zombie counts as ended.
    async fn assert_ends(pid: i32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            let running = match &stat {
                Ok(s) => !s.contains(") Z "),
                Err(_) => false,
            };
            if !running {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                // Do not leave it behind: it is ours (started by this test's probe).
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                panic!("process {pid} still running: {stat:?}");
            }
            time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn runner_publishes_thresholded_transitions() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut c = config(ProbeKind::Tcp, &format!("127.0.0.1:{port}"));
        c.success_threshold = 2;
        c.failure_threshold = 2;
        c.interval = Duration::from_millis(20);
        let handle = spawn("readiness", c.validate().expect("valid"), Arc::new(WaitPid));
        let mut rx = handle.subscribe();
        let bound = Duration::from_secs(10);
        let passing = time::timeout(bound, rx.wait_for(|s| s.state == ProbeState::Passing))
            .await
            .expect("passing within 10s")
            .expect("runner alive")
            .clone();
        assert!(passing.consecutive_successes >= 2, "{passing:?}");
        drop(listener);
        let failing = time::timeout(bound, rx.wait_for(|s| s.state == ProbeState::Failing))
            .await
            .expect("failing within 10s")
            .expect("runner alive")
            .clone();
        assert!(failing.consecutive_failures >= 2, "{failing:?}");
        assert!(
            failing
                .last_failure
                .as_deref()
                .unwrap_or("")
                .contains("connect"),
            "{failing:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn runner_waits_initial_delay_and_stops_when_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut c = config(ProbeKind::Tcp, &format!("127.0.0.1:{port}"));
        c.initial_delay = Duration::from_secs(30);
        let handle = spawn("liveness", c.validate().expect("valid"), Arc::new(WaitPid));
        time::sleep(Duration::from_secs(29)).await;
        assert_eq!(
            handle.status().checks,
            0,
            "no check before the initial delay"
        );
        let mut rx = handle.subscribe();
        time::timeout(Duration::from_secs(60), rx.wait_for(|s| s.checks > 0))
            .await
            .expect("a check soon after the delay")
            .expect("runner alive");
        drop(handle);
        // Aborting the task drops its sender; any last state change is read first.
        let closed = time::timeout(Duration::from_secs(60), async {
            while rx.changed().await.is_ok() {}
        })
        .await;
        assert!(closed.is_ok(), "the sender is dropped when the handle is");
    }
}
