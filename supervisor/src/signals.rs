//! The signals tandem handles, and what each one means.
//!
//! - SIGTERM: docker stop, systemd, Compose and `kill` ask for a graceful stop.
//! - SIGINT: ^C on a terminal, and Nomad's default `kill_signal`: also a graceful stop.
//! - SIGQUIT: some orchestrators' "stop now" (and nginx's graceful one): a stop too.
//!   A second stop signal while stopping skips the wait and SIGKILLs the app's group (the
//!   same signal again within 250 ms is one delivered twice, and is ignored).
//! - The forward list (default SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH) goes to the app's main
//!   process: reload, log reopen and resize are the app's business.
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
    /// Pass this signal on to the app.
    Forward(Signal),
}

/// Signals received by tandem, in order.
pub struct Signals {
    rx: mpsc::Receiver<Signal>,
    forward: HashSet<Signal>,
    last_stop: Option<(Signal, tokio::time::Instant)>,
}

/// The same stop signal twice within this window is one request delivered twice, not a
/// second request: GNU `timeout` and some shells signal both the process and its group.
const DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_millis(250);

const STOP: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT];

// === impl Signals ===

impl Signals {
    /// Install handlers for the stop signals and for `forward`.
    pub fn install(forward: &[Signal]) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(64);
        let mut all: Vec<Signal> = STOP.to_vec();
        all.extend(forward.iter().copied().filter(|s| !STOP.contains(s)));
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
            forward: forward.iter().copied().collect(),
            last_stop: None,
        })
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
                Some(_) => continue,
                None => std::future::pending::<()>().await,
            }
        }
    }
}
