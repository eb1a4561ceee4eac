//! `tandem upgrade` in the lifecycle: the order of the hand-over, and the adoption on the other
//! side of the exec.
//!
//! ```text
//! POST /admin/upgrade ─▶ pre-flight of the new binary (refused: the old one goes on, says why)
//!   ─▶ answer "accepted" ─▶ proxy: stop accepting, keep the sockets (new connections wait in
//!      the backlog), in-flight requests finish (drain_timeout) ─▶ admin port: the same
//!   ─▶ log readers stop at a line, their pipes and unfinished lines kept; sinks flushed
//!   ─▶ pass-through and OTLP export flushed ─▶ signals blocked, the reaper held
//!   ─▶ exec NEW with TANDEM_HANDOVER ─▶ (NEW) adopt: sockets served, pipes read on, the app
//!      watched (same pid: still our child), probes at once ─▶ Running, /status.upgrade
//!   exec failed, or NEW cannot adopt ─▶ exec the old binary (O_PATH fd) with the same hand-over
//! ```
//! The app never notices: it keeps its pid, its parent and its pipes; the kernel queues what it
//! writes while no image reads.
#![allow(unsafe_code)]

use std::{
    os::fd::{IntoRawFd, OwnedFd},
    path::PathBuf,
    time::Duration,
};

use nix::unistd::Pid;
use tokio::{sync::oneshot, time::Instant};

use super::{wiring, App, Supervisor};
use crate::{
    child::ExitStatus,
    control,
    logs::{AppInstance, Stream},
    phase::UpgradeOutcome,
    upgrade::{self, HandedApp, HandedFd, HandedGuard, HandedPipeState, Handover},
};

/// Where this process stands in upgrades.
pub struct State {
    /// Execs so far (0: never upgraded).
    pub generation: u32,
    /// The binary a default upgrade execs.
    pub started_from: String,
    /// The app a previous image ran, to adopt instead of starting one.
    pub adopt: Option<HandedApp>,
    /// The restart counter a previous image had.
    pub restarts: Option<u32>,
    /// The result of the upgrade that made this image, for /status.
    pub outcome: Option<UpgradeOutcome>,
}

// === impl State ===

impl State {
    /// A fresh start (`handover` None), or the state a previous image handed over (its app
    /// taken out of it for adoption).
    pub fn new(started_from: String, handover: Option<&mut Handover>) -> Self {
        let Some(h) = handover else {
            return State {
                generation: 0,
                started_from,
                adopt: None,
                restarts: None,
                outcome: None,
            };
        };
        let outcome = UpgradeOutcome {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            generation: h.generation,
            ok: h.failed.is_none(),
            error: h.failed.clone(),
            from_version: h.from_version.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            binary: upgrade::current_exe(),
        };
        State {
            generation: h.generation,
            started_from: if h.started_from.is_empty() {
                started_from
            } else {
                h.started_from.clone()
            },
            adopt: h.app.take(),
            restarts: Some(h.restarts),
            outcome: Some(outcome),
        }
    }
}

fn stream_name(s: Stream) -> &'static str {
    match s {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    }
}

// === impl Supervisor ===

impl Supervisor<'_> {
    /// After an upgrade: publish its result, and adopt the app the previous image ran (None
    /// when there was none to adopt).
    pub(super) fn adopted_app(&mut self) -> Option<App> {
        if let Some(restarts) = self.core.upgrade.restarts.take() {
            self.machine.restore_restarts(restarts);
        }
        if let Some(outcome) = self.core.upgrade.outcome.take() {
            if outcome.ok {
                tracing::info!(event = "upgraded", generation = outcome.generation, from_version = %outcome.from_version, version = %outcome.version, binary = %outcome.binary, "tandem upgraded in place; the app and the sockets were handed over");
            } else {
                tracing::error!(event = "upgrade_failed", generation = outcome.generation, error = ?outcome.error, binary = %outcome.binary, "the new binary could not take over; the old one runs again");
            }
            self.machine.set_upgrade(outcome);
        }
        let h = self.core.upgrade.adopt.take()?;
        let pid = Pid::from_raw(h.pid);
        let exit = match h.exited {
            // It exited while the previous image handed over: its status came with it.
            Some((code, signal, core_dumped)) => {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(ExitStatus {
                    code,
                    signal,
                    core_dumped,
                });
                rx
            }
            None => self.core.reaper.watch(pid),
        };
        let mut logs = Vec::new();
        for p in h.pipes {
            let stream = if p.stream == "stderr" {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            let carry =
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &p.carry)
                    .unwrap_or_default();
            // SAFETY: the previous image passed this pipe open and named it once.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(p.fd) };
            let instance = AppInstance {
                pid: p.pid,
                restart_count: p.restart_count,
            };
            match self
                .parts
                .logs
                .attach_resumed(stream, fd, instance, carry, p.part)
            {
                Ok(d) if p.pid == h.pid as u32 => logs.push(d),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(event = "logs_failed", error = %e, "cannot read the app's output after the upgrade; it is lost");
                }
            }
        }
        if let Some(guard) = &self.core.guard {
            guard.track(Some(pid));
        }
        let ran = Duration::from_millis(h.ran_ms);
        let since = std::time::Instant::now()
            .checked_sub(ran)
            .unwrap_or_else(std::time::Instant::now);
        self.machine.app_adopted(pid, since);
        self.machine.enter(crate::phase::Phase::Running);
        self.core.health.app_adopted();
        tracing::info!(
            event = "adopted",
            pid = h.pid,
            ran_ms = h.ran_ms,
            "the app goes on under the new image"
        );
        Some(App {
            pid,
            exit,
            started: Instant::now().checked_sub(ran).unwrap_or_else(Instant::now),
            logs,
        })
    }

    /// `POST /admin/upgrade`: pre-flight, answer, hand over, exec. Returns only when the
    /// pre-flight refused (the app runs on, untouched), or when no exec worked (then tandem's
    /// parts are down: the caller stops the app and exits 70).
    pub(super) async fn upgrade(
        &mut self,
        mut app: Option<&mut App>,
        binary: Option<String>,
        reply: oneshot::Sender<control::Reply>,
    ) -> Result<(), String> {
        let target = binary
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(&self.core.upgrade.started_from));
        let generation = self.core.upgrade.generation + 1;
        let answer = |ok: bool, error: Option<String>| {
            control::Reply::Upgrade(control::UpgradeAccepted {
                ok,
                error,
                binary: target.display().to_string(),
                generation,
            })
        };
        if let Err(why) = upgrade::preflight(&target, &self.core.reaper).await {
            tracing::error!(event = "upgrade_refused", binary = %target.display(), error = %why, "upgrade refused; this image goes on");
            let _ = reply.send(answer(false, Some(why)));
            return Ok(());
        }
        let fallback = match upgrade::open_fallback() {
            Ok(fd) => fd,
            Err(e) => {
                let why = format!("cannot keep a way back to this binary: {e}");
                tracing::error!(event = "upgrade_refused", binary = %target.display(), error = %why, "upgrade refused; this image goes on");
                let _ = reply.send(answer(false, Some(why)));
                return Ok(());
            }
        };
        let _ = reply.send(answer(true, None));
        tracing::info!(event = "upgrading", binary = %target.display(), generation, pid = app.as_ref().map(|a| a.pid.as_raw()), "upgrading: handing the app and the sockets over");
        let mut handover = self.hand_over(app.as_deref(), generation, &target).await;
        // From here on nothing awaits: signals stay pending across the exec, the reaper may
        // not take the app's exit status.
        crate::signals::block_in_this_thread();
        let hold = self.core.reaper.hold_for_exec();
        handover.signals = self
            .core
            .signals
            .take_queued()
            .into_iter()
            .map(|s| s as i32)
            .collect();
        if let (Some(a), Some(app)) = (handover.app.as_mut(), app.as_mut()) {
            if let Ok(status) = app.exit.try_recv() {
                a.exited = Some((status.code, status.signal, status.core_dumped));
            }
        }
        let why = upgrade::exec(&target, &handover, &fallback);
        tracing::error!(event = "upgrade_exec_failed", binary = %target.display(), error = %why, "exec of the new binary failed; going back to this one");
        let why = format!("{why} (the old binary took over again)");
        let again = upgrade::fall_back(&fallback, handover, why);
        drop(hold);
        crate::signals::unblock_in_this_thread();
        Err(again)
    }

    /// Quiesce every part and collect what the next image needs.
    async fn hand_over(
        &mut self,
        app: Option<&App>,
        generation: u32,
        target: &std::path::Path,
    ) -> Handover {
        let mut sockets: Vec<(String, OwnedFd)> = Vec::new();
        if let Some(proxy) = self.parts.proxy.take_serving() {
            let (handed, report) = proxy.hand_over().await;
            wiring::log_drain(&report);
            sockets.extend(
                handed
                    .into_iter()
                    .map(|(name, l)| (format!("proxy:{name}"), OwnedFd::from(l))),
            );
        }
        if let Some(o) = self.parts.outbound.take() {
            let (handed, report) = o.hand_over().await;
            wiring::log_outbound_drain(report);
            sockets.extend(
                handed
                    .into_iter()
                    .map(|(name, l)| (format!("outbound:{name}"), OwnedFd::from(l))),
            );
        }
        if let Some(admin) = self.parts.admin.take() {
            admin.stop.cancel();
            if let Ok(l) = admin.task.await {
                if let Ok(l) = l.into_std() {
                    sockets.push(("admin".to_string(), OwnedFd::from(l)));
                }
            }
        }
        if let Some(p) = self.parts.passthrough.take() {
            sockets.extend(
                p.listening_sockets()
                    .into_iter()
                    .map(|(k, fd)| (format!("passthrough:{k}"), fd)),
            );
            p.shutdown().await;
        }
        let readers = self.parts.logs.hand_over().await;
        self.parts.logs.close(self.core.cfg.logs.exit_timeout).await;
        if let Some(t) = self.parts.telemetry.take() {
            t.shutdown().await;
        }
        let guard = self.core.guard.as_ref().map(|g| {
            let (pid, fd) = g.hand_over();
            HandedGuard {
                pid: pid.as_raw(),
                fd,
                last: app.map(|a| a.pid.as_raw()),
            }
        });
        let pipes = readers
            .pipes
            .into_iter()
            .map(|(stream, instance, pipe)| {
                // Ownership goes to the hand-over: the descriptor stays open until the exec
                // (and after it, if the old binary adopts it again).
                HandedPipeState {
                    stream: stream_name(stream).to_string(),
                    fd: pipe.fd.into_raw_fd(),
                    pid: instance.pid,
                    restart_count: instance.restart_count,
                    carry: base64::Engine::encode(
                        &base64::engine::general_purpose::STANDARD,
                        &pipe.carry,
                    ),
                    part: pipe.part,
                }
            })
            .collect();
        let handed_sockets = sockets
            .into_iter()
            .map(|(key, fd)| HandedFd {
                key,
                fd: fd.into_raw_fd(),
            })
            .collect();
        Handover {
            version: upgrade::VERSION,
            generation,
            from_version: env!("CARGO_PKG_VERSION").to_string(),
            binary: target.display().to_string(),
            started_from: self.core.upgrade.started_from.clone(),
            failed: None,
            restarts: self.machine.restarts(),
            app: app.map(|app| HandedApp {
                pid: app.pid.as_raw(),
                ran_ms: app.started.elapsed().as_millis() as u64,
                ready: self.machine.status().borrow().ready,
                exited: None,
                pipes,
            }),
            guard,
            sockets: handed_sockets,
            signals: Vec::new(),
            tail: readers.tail,
            config: serde_json::to_value(&self.core.cfg).ok(),
            app_port: self.core.port.as_ref().map(|(_, p)| *p),
        }
    }
}
