//! The guard: a tiny helper process that kills the app's process group if tandem dies.
//!
//! The app itself has a parent-death signal, but its own children do not, and a SIGKILLed
//! tandem cannot clean up. So tandem starts `tandem __guard` (itself, re-executed) with the
//! read end of a pipe as its stdin. tandem writes the app's current process group id on each
//! start (0 when there is none). When tandem dies, however it dies, the kernel closes the write
//! end; the guard reads EOF and SIGKILLs the last group it was told about.
//! Invariant: the write end is close-on-exec, so no app ever holds it open.
#![allow(unsafe_code)]

use std::{
    io::{BufRead, Write},
    os::fd::OwnedFd,
    process::{Command, Stdio},
};

use nix::{
    fcntl::OFlag,
    sys::signal::{killpg, SigHandler, Signal},
    unistd::Pid,
};

/// tandem's end of the guard pipe.
pub struct Guard {
    pipe: std::fs::File,
    pid: Pid,
}

// === impl Guard ===

impl Guard {
    /// Start the guard process.
    pub fn spawn() -> std::io::Result<Guard> {
        let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .arg("__guard")
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Guard {
            pipe: std::fs::File::from(write),
            pid: Pid::from_raw(child.id() as i32),
        })
    }

    /// The guard's pid (so the reaper's orphan count can leave it out, and tests can find it).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Tell the guard which process group to kill if tandem dies (`None`: none now).
    pub fn track(&mut self, pgid: Option<Pid>) {
        let id = pgid.map_or(0, Pid::as_raw);
        if let Err(e) = writeln!(self.pipe, "{id}") {
            tracing::warn!(error = %e, "guard process is gone; the app's group is not protected against tandem's death");
        }
    }
}

/// The guard's main: runs instead of tandem's when invoked as `tandem __guard`.
pub fn run() -> ! {
    // Terminal and orchestrator signals are for tandem, not for us: only EOF ends the guard.
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        // SAFETY: SIG_IGN installs no handler code; nothing else runs in this process.
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
    }
    let mut pgid = 0;
    let stdin = std::io::stdin();
    let mut line = String::new();
    let mut lock = stdin.lock();
    loop {
        line.clear();
        match lock.read_line(&mut line) {
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
    std::process::exit(0)
}
