//! The guard: a tiny helper process that kills the app's process group if tandem dies.
//!
//! The app itself has a parent-death signal, but its own children do not, and a SIGKILLed
//! tandem cannot clean up. So, before any thread exists, tandem forks a guard holding the read
//! end of a pipe. tandem writes the app's current process group id on each start (0 when there
//! is none). When tandem dies, however it dies, the kernel closes the write end; the guard
//! reads EOF and SIGKILLs the last group it was told about.
//! Invariants: [`Guard::spawn`] runs while tandem is single-threaded (a fork of a threaded
//! process may only call async-signal-safe functions; a fork of a single-threaded one may run
//! ordinary code); the write end is close-on-exec, so no app ever holds it open.
#![allow(unsafe_code)]

use std::{
    io::{BufRead, BufReader, Write},
    os::fd::{AsRawFd, OwnedFd},
};

use nix::{
    fcntl::OFlag,
    sys::signal::{killpg, SigHandler, Signal},
    unistd::{ForkResult, Pid},
};

/// tandem's end of the guard pipe.
pub struct Guard {
    pipe: std::fs::File,
    pid: Pid,
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
            }),
        }
    }

    /// The guard's pid (so the reaper can claim its status, and tests can find it).
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Tell the guard which process group to kill if tandem dies (`None`: none now).
    pub fn track(&mut self, pgid: Option<Pid>) {
        let id = pgid.map_or(0, Pid::as_raw);
        // One write per line: the pipe is unbuffered, and `writeln!` would write twice.
        if let Err(e) = self.pipe.write_all(format!("{id}\n").as_bytes()) {
            tracing::warn!(error = %e, "guard process is gone; the app's group is not protected against tandem's death");
        }
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
