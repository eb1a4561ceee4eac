//! The guard: a tiny helper process that kills the app's process group if tandem dies.
//!
//! The app itself has a parent-death signal, but its own children do not, and a SIGKILLed
//! tandem cannot clean up. So, before any thread exists, tandem forks a guard holding the read
//! end of a pipe. tandem writes the app's current process group id on each start (0 when there
//! is none). When tandem dies, however it dies, the kernel closes the write end; the guard
//! reads EOF and SIGKILLs the last group it was told about.
//! If the guard itself is killed (an operator's `kill`, an OOM kill), [`keep_alive`] notices
//! through the reaper, logs it, and starts a new one by exec (`/proc/self/exe` with
//! [`EXEC_MARKER`]), which is safe in a threaded process, and tells it the current group.
//!
//! Invariants: [`Guard::spawn`] runs while tandem is single-threaded (a fork of a threaded
//! process may only call async-signal-safe functions; a fork of a single-threaded one may run
//! ordinary code); the write end is close-on-exec, so no app ever holds it open.
#![allow(unsafe_code)]

use std::{
    io::{BufRead, BufReader, Write},
    os::fd::{AsRawFd, OwnedFd},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::child::reap::Reaper;

use nix::{
    fcntl::OFlag,
    sys::signal::{killpg, SigHandler, Signal},
    unistd::{ForkResult, Pid},
};

/// argv\[1\] of a guard started by exec: `main` hands over to [`run_from_stdin`] at once.
pub const EXEC_MARKER: &str = "--tandem-internal-guard";

/// tandem's end of the guard pipe.
pub struct Guard {
    pipe: std::fs::File,
    pid: Pid,
    /// The group last named to the guard, for a replacement guard.
    last: Option<Pid>,
}

// === impl Guard ===

impl Guard {
    /// Fork the guard process. Must be called before any thread is started (see the module
    /// invariant): `main` calls it before building the async runtime.
    pub fn spawn() -> std::io::Result<Guard> {
        let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // SAFETY: tandem is single-threaded here (module invariant), so the child may run
        // ordinary code: no lock can be held by a thread that does not exist in the child.
        match unsafe { nix::unistd::fork() }? {
            ForkResult::Child => {
                drop(write);
                run(read)
            }
            ForkResult::Parent { child } => Ok(Guard {
                pipe: std::fs::File::from(write),
                pid: child,
                last: None,
            }),
        }
    }

    /// Start a guard by exec of tandem's own binary, its stdin the pipe's read end: safe in
    /// a threaded process, unlike a bare fork. The caller holds the reaper's spawn lock.
    fn spawn_exec() -> std::io::Result<Guard> {
        let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let child = Command::new("/proc/self/exe")
            .arg(EXEC_MARKER)
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        // Dropping a std Child neither waits nor kills: the reaper owns its exit.
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(std::io::Error::other)?);
        Ok(Guard {
            pipe: std::fs::File::from(write),
            pid,
            last: None,
        })
    }

    /// The guard a previous image of this process started (`tandem upgrade`): its pid, the
    /// write end of its pipe (inherited across exec), and the group it was last told about.
    pub fn adopt(pid: Pid, pipe: OwnedFd, last: Option<Pid>) -> Guard {
        Guard {
            pipe: std::fs::File::from(pipe),
            pid,
            last,
        }
    }

    /// The guard's pid (so the reaper can claim its status, and tests can find it).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Tell the guard which process group to kill if tandem dies (`None`: none now).
    pub fn track(&mut self, pgid: Option<Pid>) {
        self.last = pgid;
        let id = pgid.map_or(0, Pid::as_raw);
        // One write per line: the pipe is unbuffered, and `writeln!` would write twice.
        if let Err(e) = self.pipe.write_all(format!("{id}\n").as_bytes()) {
            tracing::warn!(error = %e, "guard process is gone; the app's group is not protected against tandem's death");
        }
    }
}

/// The guard shared by the lifecycle (which names groups) and the task that replaces it.
#[derive(Clone)]
pub struct SharedGuard(Arc<Mutex<Guard>>);

impl SharedGuard {
    /// See [`Guard::track`].
    pub fn track(&self, pgid: Option<Pid>) {
        self.lock().track(pgid);
    }

    /// The current guard's pid.
    pub fn pid(&self) -> Pid {
        self.lock().pid
    }

    /// What a new image needs to adopt the guard: its pid and the raw write end of its pipe
    /// (still owned here; the caller clears its close-on-exec flag just before exec).
    pub fn hand_over(&self) -> (Pid, std::os::fd::RawFd) {
        let g = self.lock();
        (g.pid, g.pipe.as_raw_fd())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Watches the guard's exit through `reaper` (claiming it, so it is not counted as an
/// orphan); when it dies while tandem runs, logs `guard_lost`, starts a new guard by exec,
/// names the current group to it and logs `guard_restored` (retrying every second if the
/// exec fails). Must be called inside the tokio runtime.
pub fn keep_alive(guard: Guard, reaper: Reaper) -> SharedGuard {
    let shared = SharedGuard(Arc::new(Mutex::new(guard)));
    let s = shared.clone();
    tokio::spawn(async move {
        loop {
            let pid = s.pid();
            let Ok(status) = reaper.watch(pid).await else {
                return;
            };
            tracing::warn!(event = "guard_lost", pid = pid.as_raw(), exit_code = status.exit_code(), "the guard process died; the app's group was unprotected against tandem's death until a new guard starts");
            loop {
                let spawned = {
                    let _hold = reaper.hold_for_spawn();
                    Guard::spawn_exec()
                };
                match spawned {
                    Ok(mut new) => {
                        let mut current = s.lock();
                        new.track(current.last);
                        tracing::info!(
                            event = "guard_restored",
                            pid = new.pid.as_raw(),
                            "a new guard process protects the app's group"
                        );
                        *current = new;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(event = "guard_failed", error = %e, "cannot start a new guard process; trying again in 1s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    });
    shared
}

/// The guard's entry when tandem started it by exec ([`EXEC_MARKER`]): stdin is the pipe.
pub fn run_from_stdin() -> ! {
    match nix::unistd::dup(0) {
        // SAFETY: dup returned a new descriptor that nothing else owns.
        Ok(fd) => run(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }),
        // SAFETY: _exit in a process that has nothing to flush.
        Err(_) => unsafe { libc::_exit(70) },
    }
}

/// The guard's whole life: wait for EOF on `read`, then kill the last group named.
fn run(read: OwnedFd) -> ! {
    // Terminal and orchestrator signals are for tandem, not for us: only EOF ends the guard.
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPIPE,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
    }
    // Do not hold tandem's stdout/stderr open: whoever reads them must see EOF when tandem
    // exits, not when the guard does.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in [0, 1, 2] {
            // SAFETY: dup2 onto the standard descriptors of this single-threaded process.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    let mut pgid = 0;
    let mut line = String::new();
    let mut reader = BufReader::new(std::fs::File::from(read));
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if let Ok(id) = line.trim().parse::<i32>() {
                    pgid = id;
                }
            }
        }
    }
    if pgid > 0 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    // SAFETY: _exit skips atexit handlers and stdio flushing that belong to tandem.
    unsafe { libc::_exit(0) }
}
