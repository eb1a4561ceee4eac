//! Zombie reaping: tandem waits for every child that dies, the app's and anyone else's.
//!
//! As PID 1 every orphan in the container is re-parented to tandem; otherwise tandem makes
//! itself a child subreaper, so the app's orphaned grandchildren come to it rather than to the
//! host's init. Invariant: this module is the only place in tandem that calls `waitpid`;
//! anything else that spawns a process registers its pid with [`Reaper::watch`] to get the
//! exit status, because a `waitpid(-1)` loop would otherwise steal it, and spawns it through
//! [`Reaper::spawn_app`] or [`Reaper::spawn_command`] (the spawn lock, see there).
use std::{
    collections::{HashMap, VecDeque},
    process::{Child, Command},
    sync::{Arc, Mutex},
};

use nix::{
    errno::Errno,
    sys::wait::{waitpid, WaitPidFlag, WaitStatus},
    unistd::Pid,
};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::oneshot,
};

use super::{AppSpec, SpawnError, Spawned, StdioMode};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// Whether it dumped core.
    pub core_dumped: bool,
}

impl ExitStatus {
    /// tandem's exit code for this status: the code, or 128+signal.
    pub fn exit_code(&self) -> i32 {
        crate::exit::from_status(self.code, self.signal)
    }

    /// True for exit code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Statuses of pids nobody has claimed yet are kept this long (count), so a process that dies
/// before its spawner calls [`Reaper::watch`] does not lose its status.
const UNCLAIMED_MAX: usize = 256;

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<ExitStatus>>,
    unclaimed: VecDeque<(i32, ExitStatus)>,
}

/// Handle to the reaper task.
#[derive(Clone)]
pub struct Reaper {
    state: Arc<Mutex<State>>,
    orphans: Counter,
    /// Held while a child is being spawned (see [`Reaper::hold_for_spawn`]).
    spawning: Arc<Mutex<()>>,
}

// === impl Reaper ===

impl Reaper {
    /// Become a subreaper (unless PID 1) and start reaping on every SIGCHLD; `orphans` counts
    /// the processes reaped that nobody was waiting for.
    pub fn start(orphans: Counter) -> std::io::Result<Self> {
        if std::process::id() != 1 {
            // Without this, orphans of the app go to the host's init and we cannot reap them
            // nor see them in tests. Failure only means older kernels: keep going.
            if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
                tracing::warn!(error = %e, "cannot become a child subreaper; orphans of the app go to init");
            }
        }
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper {
            state: Arc::default(),
            orphans,
            spawning: Arc::default(),
        };
        let this = reaper.clone();
        tokio::spawn(async move {
            loop {
                this.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// A future exit status of `pid`, which must be a child of tandem.
    pub fn watch(&self, pid: Pid) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut state = self.state.lock().expect("reaper lock poisoned");
        if let Some(i) = state.unclaimed.iter().position(|(p, _)| *p == pid.as_raw()) {
            let (_, status) = state.unclaimed.remove(i).expect("index just found");
            let _ = tx.send(status);
        } else {
            state.waiters.insert(pid.as_raw(), tx);
        }
        drop(state);
        // The child may have died between spawn and this call, with its SIGCHLD already seen.
        self.reap_all();
        rx
    }

    /// Start the app (see [`super::spawn()`]) under the spawn lock.
    pub fn spawn_app(&self, spec: &AppSpec, stdio: StdioMode) -> Result<Spawned, SpawnError> {
        let _hold = self.hold_for_spawn();
        super::spawn(spec, stdio)
    }

    /// Start `cmd` (an exec probe's command, say) under the spawn lock. Every process tandem
    /// starts while the reaper runs must start through here or [`Reaper::spawn_app`].
    pub fn spawn_command(&self, cmd: &mut Command) -> std::io::Result<Child> {
        let _hold = self.hold_for_spawn();
        cmd.spawn()
    }

    /// The spawn lock: keeps the reaper from calling `waitpid(-1)` while the guard lives. Held
    /// around `Command::spawn`: when exec fails, std waits for the failed child itself and
    /// panics ("wait() should either return Ok or panic") if our `waitpid(-1)` reaped it
    /// first, which the black-box tests hit under load.
    pub(super) fn hold_for_spawn(&self) -> std::sync::MutexGuard<'_, ()> {
        self.spawning.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep the reaper from reaping until the guard is dropped: `tandem upgrade` holds it from
    /// the last look at the app's exit to the exec, so no exit status is taken by this image
    /// and lost (the next image reaps it).
    pub fn hold_for_exec(&self) -> std::sync::MutexGuard<'_, ()> {
        self.hold_for_spawn()
    }

    /// How many processes tandem reaped that nobody was waiting for (the app's orphans).
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans.get()
    }

    /// Reap every child that has exited; never blocks.
    fn reap_all(&self) {
        let _not_spawning = self.hold_for_spawn();
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid failed");
                    return;
                }
                Ok(WaitStatus::Exited(pid, code)) => (
                    pid,
                    ExitStatus {
                        code: Some(code),
                        signal: None,
                        core_dumped: false,
                    },
                ),
                Ok(WaitStatus::Signaled(pid, sig, core)) => (
                    pid,
                    ExitStatus {
                        code: None,
                        signal: Some(sig as i32),
                        core_dumped: core,
                    },
                ),
                // Stopped/continued are not exits; WNOHANG without WUNTRACED does not report them.
                Ok(_) => continue,
            };
            let (pid, status) = status;
            let mut state = self.state.lock().expect("reaper lock poisoned");
            match state.waiters.remove(&pid.as_raw()) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => {
                    self.orphans.inc();
                    tracing::debug!(pid = pid.as_raw(), "reaped orphan");
                    if state.unclaimed.len() == UNCLAIMED_MAX {
                        state.unclaimed.pop_front();
                    }
                    state.unclaimed.push_back((pid.as_raw(), status));
                }
            }
        }
    }
}
