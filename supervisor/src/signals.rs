//! The signals tandem handles, and what each one means.
//!
//! - SIGTERM: docker stop, systemd, Compose and `kill` ask for a graceful stop.
//! - SIGINT: ^C on a terminal, and Nomad's default `kill_signal`: also a graceful stop.
//! - SIGQUIT: some orchestrators' "stop now" (and nginx's graceful one): a stop too.
//!   A second stop signal while stopping skips the wait and SIGKILLs the app's group (the
//!   same signal again within 250 ms is one delivered twice, and is ignored).
//! - SIGHUP is always tandem's: it reopens tandem's log files, reloads the proxy's files and
//!   reloads the config in place (logrotate's postrotate, `systemctl reload`, a closing
//!   terminal; see `lifecycle::reload`), whether or not it is also forwarded (after that). Its default action would kill tandem with no stop sequence.
//! - The forward list (default SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH) goes to the app's main
//!   process: reload, log reopen and resize are the app's business.
//! - SIGUSR1, SIGUSR2, SIGALRM and SIGWINCH are always caught too: an operator or a script
//!   that sends one of them (to the app's "main process", which is tandem) must never end
//!   tandem by the signal's default action. Not forwarded, they are logged and ignored.
//! - SIGCHLD belongs to the reaper (`child::reap`).
use std::collections::HashSet;

use nix::sys::signal::Signal;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::mpsc,
};

/// What a received signal asks of the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEvent {
    /// Start the stop sequence (or, while stopping, kill now).
    Stop(Signal),
    /// Pass this signal on to the app (SIGHUP: after tandem's own reopen and reload).
    Forward(Signal),
    /// SIGHUP, not in the forward list: tandem's own reopen and reload only.
    Reload,
}

/// Signals received by tandem, in order.
pub struct Signals {
    rx: mpsc::Receiver<Signal>,
    /// The handlers' sender, to queue signals a previous image of tandem received
    /// (`tandem upgrade`).
    tx: mpsc::Sender<Signal>,
    forward: HashSet<Signal>,
    last_stop: Option<(Signal, tokio::time::Instant)>,
}

/// The same stop signal twice within this window is one request delivered twice, not a
/// second request: GNU `timeout` and some shells signal both the process and its group.
const DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

const STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

/// Caught whatever the forward list says: each one's default action ends the process (WINCH's
/// does not, but a terminal sends it to tandem and it is cheap to own), and tandem must only
/// ever end through its stop sequence.
const OWNED: [Signal; 5] = [
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGWINCH,
];

// === impl Signals ===

impl Signals {
    /// Install handlers for the stop signals, the signals tandem owns, and `forward`.
    pub fn install(forward: &[Signal]) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(64);
        let mut all: Vec<Signal> = STOP.to_vec();
        all.extend(OWNED);
        all.extend(forward.iter().copied());
        all.sort_by_key(|s| *s as i32);
        all.dedup();
        for sig in all {
            let mut stream = signal(SignalKind::from_raw(sig as i32))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(sig).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok(Self {
            rx,
            tx,
            forward: forward.iter().copied().collect(),
            last_stop: None,
        })
    }

    /// Signals received but not yet taken by [`Signals::recv`], taken out (raw, before any
    /// dedup): for the next image of tandem, which queues them again with [`Signals::requeue`].
    pub fn take_queued(&mut self) -> Vec<Signal> {
        let mut queued = Vec::new();
        while let Ok(sig) = self.rx.try_recv() {
            queued.push(sig);
        }
        queued
    }

    /// Queue signals a previous image received and did not act on.
    pub fn requeue(&self, signals: &[Signal]) {
        for sig in signals {
            let _ = self.tx.try_send(*sig);
        }
    }

    /// The next signal; never returns `None` while tandem runs.
    pub async fn recv(&mut self) -> SignalEvent {
        loop {
            match self.rx.recv().await {
                Some(sig) if STOP.contains(&sig) => {
                    let now = tokio::time::Instant::now();
                    if let Some((last, at)) = self.last_stop {
                        if last == sig && now.duration_since(at) < DUPLICATE_WINDOW {
                            tracing::debug!(signal = %sig, "duplicate delivery of a stop signal ignored");
                            continue;
                        }
                    }
                    self.last_stop = Some((sig, now));
                    return SignalEvent::Stop(sig);
                }
                Some(sig) if self.forward.contains(&sig) => return SignalEvent::Forward(sig),
                Some(Signal::SIGHUP) => return SignalEvent::Reload,
                Some(sig) => {
                    tracing::info!(event = "signal_ignored", signal = %sig, "signal not in app.forward_signals; ignored");
                    continue;
                }
                None => std::future::pending::<()>().await,
            }
        }
    }
}

/// The asynchronous signals tandem may handle or forward: all but the ones the kernel raises
/// for a fault of the thread itself (and SIGKILL/SIGSTOP, which cannot be blocked).
fn async_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::SigSet;
    let mut set = SigSet::all();
    for sig in [
        Signal::SIGKILL,
        Signal::SIGSTOP,
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGFPE,
        Signal::SIGILL,
        Signal::SIGTRAP,
        Signal::SIGABRT,
        Signal::SIGSYS,
        Signal::SIGPIPE,
    ] {
        set.remove(sig);
    }
    set
}

/// Block the asynchronous signals in the calling thread. `main` calls it before any thread
/// exists (so every thread starts with them blocked) and the runtime on each of its threads;
/// the lifecycle unblocks them on the main thread only ([`unblock_in_this_thread`]), so a
/// signal's handler runs there. Before `tandem upgrade` execs, the main thread blocks them
/// again: a signal sent meanwhile stays pending across the exec and reaches the new image.
pub fn block_in_this_thread() {
    let _ = async_signals().thread_block();
}

/// Unblock the asynchronous signals in the calling thread (the main thread, once the handlers
/// are installed).
pub fn unblock_in_this_thread() {
    let _ = async_signals().thread_unblock();
}
