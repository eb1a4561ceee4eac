//! Signalling the app: one process, or its whole process group.
//!
//! The app runs in its own process group (pgid = its pid), so a stop signal reaches the
//! workers it forked too (dumb-init#212: signals that never reach the real workers). An app
//! that moved itself to another group or session is still signalled directly by pid.
use nix::{
    errno::Errno,
    sys::signal::{kill, killpg, Signal},
    unistd::Pid,
};

/// Send `sig` to the process group led by `pid`, and to `pid` itself in case it left the
/// group. A group or process that is already gone is not an error.
pub fn signal_group(pid: Pid, sig: Signal) -> nix::Result<()> {
    match killpg(pid, sig) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => return Err(e),
    }
    // Only when the leader left its group: otherwise it would get the signal twice, and some
    // apps read a second SIGTERM as "quit now".
    match nix::unistd::getpgid(Some(pid)) {
        Ok(pgid) if pgid != pid => signal_process(pid, sig),
        _ => Ok(()),
    }
}

/// Send `sig` to the app's main process only (how forwarded signals travel, as tini does: a
/// SIGUSR1 meant for the app must not kill a `sleep` its shell script is running).
pub fn signal_process(pid: Pid, sig: Signal) -> nix::Result<()> {
    match kill(pid, sig) {
        Err(Errno::ESRCH) => Ok(()),
        other => other,
    }
}

/// Whether any process is still in the group led by `pid`.
pub fn group_alive(pid: Pid) -> bool {
    killpg(pid, None).is_ok()
}
