//! `tandem upgrade`: tandem execs a new binary in its own process, handing over the app (same
//! pid, still its child), the app's pipes, the listening sockets and the counters.
//!
//! The one thing to know: nothing here decides an order; [`crate::lifecycle`] quiesces the parts
//! and calls [`exec`]. This module holds the hand-over's form and the few system calls around
//! it: the pre-flight of the new binary ([`preflight`]), the state written to a memfd
//! ([`Handover`], found by the new image through [`HANDOVER_ENV`]), the descriptors kept across
//! the exec, the exec itself, and the way back when the new image cannot adopt ([`fall_back`]:
//! the old binary again, from an `O_PATH` descriptor opened before the exec, so a file replaced
//! meanwhile does not matter).
//!
//! Invariant: every descriptor tandem opens is close-on-exec (Rust's and tokio's default); the
//! hand-over clears the flag only on the descriptors it names, just before the exec.
#![allow(unsafe_code)]

use std::{
    ffi::{CString, OsString},
    io::{Read, Seek, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStringExt,
        unix::fs::{MetadataExt, PermissionsExt},
    },
    path::Path,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::child::Reaper;

/// The environment variable naming the memfd that holds the [`Handover`].
pub const HANDOVER_ENV: &str = "TANDEM_HANDOVER";
/// The environment variable naming the old binary's `O_PATH` descriptor (the way back).
pub const FALLBACK_ENV: &str = "TANDEM_HANDOVER_FALLBACK";
/// argv\[1\] asking a binary which hand-over version it reads: it prints
/// `tandem-handover <N>` and exits 0.
pub const VERSION_MARKER: &str = "--tandem-internal-handover-version";
/// The form of [`Handover`] this binary writes and reads.
pub const VERSION: u32 = 1;

/// How long the new binary's pre-flight may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(20);

/// Everything a new image needs to go on where the old one stopped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Handover {
    pub version: u32,
    /// How many execs this tandem has been through (1 after the first upgrade).
    pub generation: u32,
    /// The version of the image that wrote this.
    pub from_version: String,
    /// The binary exec'd.
    pub binary: String,
    /// The path the first image was started from: what a later `tandem upgrade` execs by
    /// default.
    pub started_from: String,
    /// Set when the new binary could not take over and this is the old one again: why.
    pub failed: Option<String>,
    /// The app's restart counter.
    pub restarts: u32,
    /// The running app, if any.
    pub app: Option<HandedApp>,
    /// The guard process.
    pub guard: Option<HandedGuard>,
    /// Listening sockets by key: `proxy:<listener>`, `admin`, `passthrough:grpc`,
    /// `passthrough:http`.
    pub sockets: Vec<HandedFd>,
    /// Signals received and not acted on yet, raw numbers.
    pub signals: Vec<i32>,
    /// Tail mode's positions (beside the app): where the new image reads on.
    pub tail: Option<crate::logs::tail::Checkpoint>,
    /// The config the old image ran with (its effective form): what the old binary resumes
    /// with when it takes over again, whatever the files say by then.
    pub config: Option<serde_json::Value>,
    /// `restart.mode = "rolling"`: the port the app process listens on (a rolling restart
    /// moved it off the configured one); the new image's upstreams and probes follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<u16>,
}

/// The config a hand-over carries, checked again (`tandem upgrade`'s way back: the old
/// binary resumes with the config it ran, not files that may have been edited meanwhile).
pub fn resumed_config(handover: &Handover) -> Result<crate::config::Checked, String> {
    let value = handover
        .config
        .clone()
        .ok_or_else(|| "the hand-over carries no config".to_string())?;
    let config: crate::config::Config =
        serde_json::from_value(value).map_err(|e| format!("the handed config: {e}"))?;
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    crate::config::checked::check(config, &env, false, false).map_err(|e| e.to_string())
}

/// The app as handed over.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandedApp {
    pub pid: i32,
    /// How long it had run.
    pub ran_ms: u64,
    /// Whether it was ready.
    pub ready: bool,
    /// Its exit status when it exited during the hand-over: (code, signal, core dumped).
    pub exited: Option<(Option<i32>, Option<i32>, bool)>,
    /// Its pipes (and pipes of earlier runs still held open by their descendants).
    pub pipes: Vec<HandedPipeState>,
}

/// One app pipe, with the unfinished line its reader held.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandedPipeState {
    /// `stdout` or `stderr`.
    pub stream: String,
    pub fd: RawFd,
    /// The app instance the pipe belongs to.
    pub pid: u32,
    pub restart_count: u32,
    /// The unfinished line, base64.
    pub carry: String,
    pub part: u32,
}

/// The guard process and its pipe.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandedGuard {
    pub pid: i32,
    pub fd: RawFd,
    /// The process group it kills if tandem dies.
    pub last: Option<i32>,
}

/// A descriptor by name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HandedFd {
    pub key: String,
    pub fd: RawFd,
}

/// What a new image found in its environment.
pub struct Received {
    pub handover: Handover,
    /// The old binary, to go back to.
    pub fallback: Option<OwnedFd>,
}

/// A hand-over this image cannot read.
pub struct Unreadable {
    pub why: String,
    /// The hand-over's text, when it could be read at all (the old binary reads it).
    pub raw: Option<String>,
    pub fallback: Option<OwnedFd>,
}

// === impl Handover ===

impl Handover {
    /// The descriptors named in it, to keep across the exec.
    fn fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.sockets.iter().map(|s| s.fd).collect();
        if let Some(app) = &self.app {
            fds.extend(app.pipes.iter().map(|p| p.fd));
        }
        if let Some(g) = &self.guard {
            fds.push(g.fd);
        }
        fds
    }

    /// The guard process the previous image ran (taken once), to go on protecting the app.
    pub fn guard(&mut self) -> Option<crate::child::Guard> {
        let g = self.guard.take()?;
        // SAFETY: the previous image passed the guard's pipe open and named it once.
        let pipe = unsafe { OwnedFd::from_raw_fd(g.fd) };
        Some(crate::child::Guard::adopt(
            nix::unistd::Pid::from_raw(g.pid),
            pipe,
            g.last.map(nix::unistd::Pid::from_raw),
        ))
    }

    /// Take a named socket (once).
    pub fn take_socket(&mut self, key: &str) -> Option<OwnedFd> {
        let i = self.sockets.iter().position(|s| s.key == key)?;
        let fd = self.sockets.remove(i).fd;
        // SAFETY: the old image passed this descriptor open (cleared close-on-exec) and named
        // it once; removed from the list, nothing else here takes it.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Take the listening socket named `key` (once) when it is bound where `configured` says
    /// (port 0: any port on that address), non-blocking, for the new image to serve; None when
    /// there is none or the config moved it (it is closed then, and the caller binds anew).
    pub fn take_listener(
        &mut self,
        key: &str,
        configured: std::net::SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let l = std::net::TcpListener::from(self.take_socket(key)?);
        let same = l.local_addr().is_ok_and(|a| {
            a == configured || (configured.port() == 0 && a.ip() == configured.ip())
        });
        (same && l.set_nonblocking(true).is_ok()).then_some(l)
    }

    /// Close the sockets nobody took (a listener removed from the config meanwhile).
    pub fn close_unclaimed(&mut self) {
        for s in std::mem::take(&mut self.sockets) {
            tracing::info!(event = "handover_socket_closed", key = %s.key, "a handed-over socket is not in the config any more; closed");
            // SAFETY: as in take_socket.
            drop(unsafe { OwnedFd::from_raw_fd(s.fd) });
        }
    }
}

/// The hand-over this process was exec'd with, if any. The variables stay in tandem's own
/// environment (an app, a probe or a later exec never gets them: see `TANDEM_ONLY_ENV` and
/// [`exec`]).
pub fn take_from_env() -> Option<Result<Received, Unreadable>> {
    let fd = std::env::var(HANDOVER_ENV).ok()?;
    let fallback = std::env::var(FALLBACK_ENV)
        .ok()
        .and_then(|f| f.parse::<RawFd>().ok())
        // SAFETY: the old image opened it for us without close-on-exec and named it here.
        .map(|f| unsafe { OwnedFd::from_raw_fd(f) });
    let mut raw = None;
    let mut read = || -> Result<Handover, String> {
        let fd: RawFd = fd
            .parse()
            .map_err(|_| format!("{HANDOVER_ENV}={fd}: not a descriptor"))?;
        // SAFETY: as above: the memfd was left open for us and is read once.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut text = String::new();
        file.read_to_string(&mut text)
            .map_err(|e| format!("reading the hand-over: {e}"))?;
        raw = Some(text.clone());
        let h: Handover = serde_json::from_str(&text)
            .map_err(|e| format!("the hand-over does not parse: {e}"))?;
        if h.version != VERSION {
            return Err(format!(
                "hand-over version {} (this binary reads {VERSION})",
                h.version
            ));
        }
        Ok(h)
    };
    // Close-on-exec again on everything inherited: an app started later must not hold them.
    if let Some(f) = &fallback {
        let _ = close_on_exec(f.as_raw_fd());
    }
    Some(match read() {
        Ok(handover) => {
            for fd in handover.fds() {
                let _ = close_on_exec(fd);
            }
            Ok(Received { handover, fallback })
        }
        Err(why) => Err(Unreadable { why, raw, fallback }),
    })
}

/// The binary the process runs now, as a path to exec again ("(deleted)" dropped: the usual
/// deploy renames a new file over the old path).
pub fn current_exe() -> String {
    std::env::current_exe()
        .map(|p| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .unwrap_or_default()
}

/// Check `binary` before anything is touched: a regular executable file, owned by root or by
/// tandem's user and writable by no one else (an upgrade runs it with tandem's privileges);
/// a tandem that reads this hand-over version; and one that accepts the running config
/// (`BINARY check` with the run's arguments). Err: why not, for the caller.
pub async fn preflight(binary: &Path, reaper: &Reaper) -> Result<(), String> {
    let meta = std::fs::metadata(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", binary.display()));
    }
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        return Err(format!("{}: not executable", binary.display()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{}: owned by uid {}, neither root nor tandem's user ({me})",
            binary.display(),
            meta.uid()
        ));
    }
    if mode & 0o022 != 0 {
        return Err(format!(
            "{}: writable by group or others (mode {:o})",
            binary.display(),
            mode & 0o7777
        ));
    }
    let (code, out) = run(binary, [OsString::from(VERSION_MARKER)], reaper).await?;
    let expected = format!("tandem-handover {VERSION}");
    if code != Some(0) || out.trim() != expected {
        return Err(format!(
            "{}: not a tandem that can take this one's hand-over (asked {VERSION_MARKER}, expected {expected:?}, got exit {code:?}: {:?})",
            binary.display(),
            out.trim().chars().take(200).collect::<String>()
        ));
    }
    let mut args = vec![OsString::from("check")];
    args.extend(std::env::args_os().skip(1));
    let (code, out) = run(binary, args, reaper).await?;
    if code != Some(0) {
        let last = out
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!(
            "{} check refused the running config (exit {}): {}",
            binary.display(),
            code.map_or("signal".to_string(), |c| c.to_string()),
            last.chars().take(500).collect::<String>()
        ));
    }
    Ok(())
}

/// Run `binary args`, its stdout and stderr read together (at most 64 KiB kept), under the
/// reaper; bounded by [`PREFLIGHT_TIMEOUT`].
async fn run(
    binary: &Path,
    args: impl IntoIterator<Item = OsString>,
    reaper: &Reaper,
) -> Result<(Option<i32>, String), String> {
    let out = tempfile_for_output().map_err(|e| format!("pre-flight: {e}"))?;
    let mut cmd = std::process::Command::new(binary);
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().map_err(|e| format!("pre-flight: {e}"))?)
        .stderr(out.try_clone().map_err(|e| format!("pre-flight: {e}"))?)
        .env_remove(HANDOVER_ENV)
        .env_remove(FALLBACK_ENV)
        .env_remove("NOTIFY_SOCKET");
    let child = reaper
        .spawn_command(&mut cmd)
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    drop(cmd);
    let status = match tokio::time::timeout(PREFLIGHT_TIMEOUT, reaper.watch(pid)).await {
        Ok(Ok(status)) => status,
        Ok(Err(_)) => return Err("pre-flight: its exit was lost".to_string()),
        Err(_) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            return Err(format!(
                "{} did not answer within {}s",
                binary.display(),
                PREFLIGHT_TIMEOUT.as_secs()
            ));
        }
    };
    let mut out = out;
    let mut text = Vec::new();
    let _ = out.rewind();
    let _ = Read::by_ref(&mut out)
        .take(64 * 1024)
        .read_to_end(&mut text);
    Ok((status.code, String::from_utf8_lossy(&text).into_owned()))
}

/// An anonymous file for a pre-flight's output (no pipe to read while waiting).
fn tempfile_for_output() -> std::io::Result<std::fs::File> {
    let fd = nix::sys::memfd::memfd_create(
        c"tandem-preflight",
        nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC,
    )?;
    Ok(std::fs::File::from(fd))
}

/// Write the hand-over, clear close-on-exec on every descriptor it names, and exec `binary`
/// with the same arguments and environment (plus [`HANDOVER_ENV`] and [`FALLBACK_ENV`]).
/// Returns only when the exec failed: why.
pub fn exec(binary: &Path, handover: &Handover, fallback: &OwnedFd) -> String {
    let memfd = match write(handover) {
        Ok(fd) => fd,
        Err(e) => return format!("writing the hand-over: {e}"),
    };
    for fd in handover.fds() {
        if let Err(e) = keep_across_exec(fd) {
            return format!("keeping descriptor {fd} across exec: {e}");
        }
    }
    if let Err(e) = keep_across_exec(fallback.as_raw_fd()) {
        return format!("keeping the old binary's descriptor across exec: {e}");
    }
    let argv = argv(binary);
    let envp = envp(memfd.as_raw_fd(), fallback.as_raw_fd());
    let Ok(path) = CString::new(binary.as_os_str().to_owned().into_vec()) else {
        return format!("{}: a NUL in the path", binary.display());
    };
    let err = nix::unistd::execve(&path, &argv, &envp).unwrap_err();
    format!("exec {}: {err}", binary.display())
}

/// The new image cannot adopt (its config does not load, the hand-over does not parse):
/// exec the old binary from `fallback` with `handover` marked failed. Returns only when
/// that failed too.
pub fn fall_back(fallback: &OwnedFd, mut handover: Handover, why: String) -> String {
    handover.failed = Some(why);
    let memfd = match write(&handover) {
        Ok(fd) => fd,
        Err(e) => return format!("writing the hand-over: {e}"),
    };
    for fd in handover.fds() {
        let _ = keep_across_exec(fd);
    }
    let _ = keep_across_exec(fallback.as_raw_fd());
    let argv = argv(Path::new(&handover.started_from));
    let envp = envp(memfd.as_raw_fd(), fallback.as_raw_fd());
    let err = nix::unistd::fexecve(fallback.as_raw_fd(), &argv, &envp).unwrap_err();
    format!("exec of the old binary: {err}")
}

/// [`fall_back`] from a hand-over this image could not read: its JSON, marked failed, goes
/// back to the old binary as it was (the descriptors it names are still open). Returns only
/// when that failed.
pub fn fall_back_unread(u: Unreadable) -> String {
    let Some(fallback) = u.fallback else {
        return format!("{}; and no way back to the old binary", u.why);
    };
    let Some(mut value) = u
        .raw
        .and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok())
    else {
        return format!("{}; the hand-over is not JSON, no way back", u.why);
    };
    value["failed"] = serde_json::Value::String(u.why.clone());
    let Ok(handover) = serde_json::from_value::<Handover>(value) else {
        return format!(
            "{}; the hand-over is not one this binary can pass back",
            u.why
        );
    };
    fall_back(&fallback, handover, u.why)
}

/// The running binary, as an `O_PATH` descriptor kept across exec: the way back.
pub fn open_fallback() -> std::io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        "/proc/self/exe",
        nix::fcntl::OFlag::O_PATH,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn write(handover: &Handover) -> std::io::Result<OwnedFd> {
    let fd = nix::sys::memfd::memfd_create(
        c"tandem-handover",
        nix::sys::memfd::MemFdCreateFlag::empty(),
    )?;
    let mut file = std::fs::File::from(fd);
    file.write_all(&serde_json::to_vec(handover).map_err(std::io::Error::other)?)?;
    file.rewind()?;
    Ok(OwnedFd::from(file))
}

fn close_on_exec(fd: RawFd) -> std::io::Result<()> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(())
}

fn keep_across_exec(fd: RawFd) -> std::io::Result<()> {
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )?;
    Ok(())
}

/// The same arguments, argv\[0\] the binary.
fn argv(binary: &Path) -> Vec<CString> {
    let mut argv = vec![CString::new(binary.as_os_str().to_owned().into_vec()).unwrap_or_default()];
    argv.extend(
        std::env::args_os()
            .skip(1)
            .filter_map(|a| CString::new(a.into_vec()).ok()),
    );
    argv
}

/// The same environment, plus where the hand-over is.
fn envp(memfd: RawFd, fallback: RawFd) -> Vec<CString> {
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != HANDOVER_ENV && k != FALLBACK_ENV)
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect();
    env.extend(CString::new(format!("{HANDOVER_ENV}={memfd}")).ok());
    env.extend(CString::new(format!("{FALLBACK_ENV}={fallback}")).ok());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handover_round_trips_through_json() {
        let h = Handover {
            version: VERSION,
            generation: 2,
            app: Some(HandedApp {
                pid: 42,
                pipes: vec![HandedPipeState {
                    stream: "stdout".into(),
                    fd: 7,
                    carry: "aGFs".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            sockets: vec![HandedFd {
                key: "proxy:web".into(),
                fd: 9,
            }],
            ..Default::default()
        };
        let back: Handover =
            serde_json::from_str(&serde_json::to_string(&h).expect("serializes")).expect("parses");
        assert_eq!(back.fds(), [9, 7]);
        assert_eq!(back.app.expect("app").pipes[0].carry, "aGFs");
    }
}
