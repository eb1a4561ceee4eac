//! The lifecycle: the one state machine that decides the order of everything tandem does.
//!
//! ```text
//! Starting ─▶ start log pipeline ─▶ [OTLP pass-through: bind, set the app's OTEL_* env]
//!    ─▶ bind proxy listeners (held: not ready) ─▶ bind admin ─▶ spawn app ─▶ Running
//!    ─▶ readiness probe passes ─▶ ready: proxy forwards, READY=1
//! Running ── app exits, or liveness fails (then: stop it) ─▶ policy says restart?
//!    │        ├─ yes ─▶ Restarting: not ready, proxy holds requests; backoff, and the
//!    │        │         last run's records delivered (bounded) ─▶ spawn ...
//!    │        └─ no ─▶ Stopping ─▶ exit with the app's code
//!    (a spawn that fails for want of fds, processes or memory is a failed start: the same
//!     policy, back-off and start limit, not tandem's exit 70)
//!    ├─ SIGHUP / POST /admin/reload ─▶ config reloaded in place (lifecycle::reload)
//!    ├─ POST /admin/restart ─▶ config read again (lifecycle::rolling) ─▶ stop the app, then
//!    │        Restarting at once (no back-off); or, rolling: a second app process, then the old
//!    │        one drained and stopped (lifecycle::rolling)
//!    └─ SIGTERM/INT/QUIT ─▶ Stopping: STOPPING=1, /readyz 503 ─▶ shutdown.delay
//!         ─▶ drain proxy ─▶ stop_signal to the app's group ─▶ stop_timeout ─▶ SIGKILL
//! every way out ─▶ Stopping (STOPPING=1) ─▶ drain what still serves
//!         ─▶ read pipes to EOF, flush logs ─▶ forward the pass-through's queue
//!         ─▶ flush OTLP (spans, logs, metrics) ─▶ Stopped ─▶ exit(code)
//! ```
//! This module holds the order; [`machine`] the phases' transitions (every one through
//! [`Machine::enter`]); [`wiring`] builds the parts and takes them down; other modules only
//! offer operations (bind, serve, drain, spawn, probe, flush). A second stop signal at any
//! point of Stopping SIGKILLs at once.
//! Invariant: [`run`] is driven by `block_on` on the main thread, because the app's
//! parent-death signal is tied to the thread that spawned it (see `child::spawn`).
//! The current [`Status`](crate::phase::Status) is published on a `watch` channel: `/status`,
//! sd_notify and tests observe the phases from there, never by timing.
pub mod machine;
pub mod reload;
pub mod rolling;
pub mod start_error;
pub mod upgrade;
pub mod wiring;

use std::{future::Future, pin::Pin, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    sync::oneshot,
    time::{sleep, Instant},
};

use self::{
    machine::Machine,
    wiring::{Core, Parts, Prepared, Teardown},
};
use crate::{
    child::{self, AppSpec, ExitStatus, Guard, StdioMode},
    config::RestartPolicy,
    control, exit,
    health::probe::ProbeStatus,
    logs::{AppInstance, Delivered, Stream},
    phase::Phase,
    signals::SignalEvent,
};

/// What the lifecycle is given besides the config.
pub struct Options {
    /// The guard process, forked by `main` while tandem was single-threaded.
    pub guard: Option<Guard>,
    /// Where the config came from, read again on a reload; None: reload refuses.
    pub config_source: Option<reload::ConfigSource>,
    /// What a previous image handed over (`tandem upgrade`); None: a fresh start.
    pub handover: Option<crate::upgrade::Handover>,
    /// The binary this tandem was started from (a default upgrade execs it again).
    pub started_from: String,
}

/// What the lifecycle waits for besides the app: a signal, or an action from the admin port.
enum Event {
    Signal(SignalEvent),
    Control(control::Request),
}

// === impl Core ===

impl Core {
    /// The next signal or admin action, whichever comes first.
    async fn next_event(&mut self) -> Event {
        tokio::select! {
            ev = self.signals.recv() => Event::Signal(ev),
            Some(req) = self.control.recv() => Event::Control(req),
        }
    }
}

/// Supervise the app described by the checked config until it is done; returns tandem's exit
/// code.
pub async fn run(checked: crate::config::Checked, opts: Options) -> i32 {
    let Prepared {
        mut core,
        plan,
        metrics,
        notifier,
    } = match wiring::prepare(checked, opts) {
        Ok(p) => p,
        Err(e) => {
            e.log();
            return e.exit_code();
        }
    };
    let mut machine = Machine::new(
        metrics,
        Box::new(notifier),
        Machine::stop_budget(&core.cfg),
        &core.cfg.restart,
        core.health.healthy(),
    );
    machine.announce();
    let (code, teardown) = match plan.start(&core.cfg, &machine).await {
        Ok(parts) => {
            let mut sup = Supervisor {
                core: &mut core,
                machine: &mut machine,
                parts,
            };
            (sup.run().await, Teardown::from(sup.parts))
        }
        Err(failed) => {
            failed.error.log();
            (failed.error.exit_code(), failed.started)
        }
    };
    // Every way out passes here: Stopping (unless a stop signal entered it already), the
    // parts taken down in order, then Stopped.
    machine.enter(Phase::Stopping);
    teardown.finish(&core.cfg).await;
    finish(&core, &mut machine, code)
}

/// Last step on every path out: publish Stopped and say goodbye.
fn finish(core: &Core, machine: &mut Machine, code: i32) -> i32 {
    machine.enter(Phase::Stopped);
    if let Some(guard) = &core.guard {
        guard.track(None);
    }
    tracing::info!(
        event = "exit",
        exit_code = code,
        restarts = machine.restarts(),
        orphans_reaped = core.reaper.orphans_reaped(),
        "tandem exits"
    );
    code
}

/// The running app.
struct App {
    pid: Pid,
    exit: oneshot::Receiver<ExitStatus>,
    started: Instant,
    /// Its pipe readers' end: the next run waits for them, so records stay in run order.
    logs: Vec<Delivered>,
}

/// Why the wait on a running app ended.
enum Outcome {
    Exited(ExitStatus),
    /// `POST /admin/restart`: answered once the new app started.
    RestartRequested(control::Request),
    /// `POST /admin/upgrade` handed over, and no binary could take over: why.
    UpgradeFailed(String),
    StopRequested(Signal),
    LivenessFailed(String),
}

/// The order rules, over the started parts and the machine.
struct Supervisor<'a> {
    core: &'a mut Core,
    machine: &'a mut Machine,
    parts: Parts,
}

/// The requests in flight at an app exit, for its log line: `request id method path`, at most
/// 20 of them (then how many more).
fn in_flight_summary(in_flight: &[tandem_proxy::InFlight]) -> String {
    const SHOWN: usize = 20;
    let mut parts: Vec<String> = in_flight
        .iter()
        .take(SHOWN)
        .map(|r| format!("{} {} {}", r.request_id, r.method, r.path))
        .collect();
    if in_flight.len() > SHOWN {
        parts.push(format!("and {} more", in_flight.len() - SHOWN));
    }
    parts.join(", ")
}

/// Sleep `delay`, then wait until the last run's readers have delivered its records (until
/// `deadline` at most); false when one was still open then.
async fn restart_due(delay: Duration, delivered: &mut [Delivered], deadline: Instant) -> bool {
    sleep(delay).await;
    let mut all = true;
    for d in delivered {
        all &= d.wait(deadline).await;
    }
    all
}

/// Stand-in status when the reaper dropped a watch (cannot happen while it runs).
const LOST: ExitStatus = ExitStatus {
    code: None,
    signal: None,
    core_dumped: false,
};

// === impl Supervisor ===

impl Supervisor<'_> {
    /// The app's runs, top to bottom, until one of them decides tandem's exit code. Stopping
    /// is entered here only by a stop signal while the app runs (there is still an app to
    /// stop); every other way out enters it on return, in [`run`].
    async fn run(&mut self) -> i32 {
        // After `tandem upgrade`: the app the previous image ran, still our child.
        let mut adopted = self.adopted_app();
        let Some(spec) = self.parts.spec.clone() else {
            return self.run_beside().await;
        };
        // An asked restart, answered once the next app started (or could not).
        let mut asked: Option<control::Request> = None;
        loop {
            let started = match adopted.take() {
                Some(app) => Ok(app),
                None if !self.machine.may_start() => {
                    self.answer_restart(asked.take(), None);
                    return exit::START_LIMIT;
                }
                None => {
                    let next = self.next_spec(&spec);
                    self.start_app(&next)
                }
            };
            self.answer_restart(asked.take(), started.as_ref().ok().map(|a| a.pid));
            let mut app = match started {
                Ok(app) => app,
                Err(e) if e.is_transient() && self.machine.retries_failed_starts() => {
                    // Out of fds, processes or memory: a failed start, tried again after the
                    // back-off and under the start limit, as an app that crashed at start.
                    let delay = self.machine.restart_delay(None);
                    self.machine.enter(Phase::Restarting);
                    tracing::info!(
                        event = "restarting",
                        delay_ms = delay.as_millis() as u64,
                        restarts = self.machine.restarts() + 1,
                        "starting the app failed; trying again in {} ms",
                        delay.as_millis()
                    );
                    if let Some(sig) = self.backoff_wait(delay, &mut []).await {
                        tracing::info!(event = "stopping", signal = %sig, "stop requested while waiting to restart");
                        return e.exit_code();
                    }
                    self.machine.count_restart();
                    continue;
                }
                Err(e) => return e.exit_code(),
            };

            let status = match self.wait_running_or_roll(&mut app).await {
                Outcome::UpgradeFailed(why) => {
                    tracing::error!(event = "internal_error", error = %why, "no binary could take over after the hand-over; stopping the app");
                    self.kill(&app, "upgrade_failed", app.started);
                    let status = (&mut app.exit).await.unwrap_or(LOST);
                    self.app_exited(&app, &status);
                    return exit::INTERNAL;
                }
                Outcome::StopRequested(sig) => return self.stop(app, sig).await.exit_code(),
                Outcome::Exited(status) => status,
                Outcome::RestartRequested(req) => {
                    // The ordinary stop, then the restart path below at once: not ready, so
                    // the proxy holds requests until the new app is ready.
                    tracing::info!(
                        event = "restart_requested",
                        pid = app.pid.as_raw(),
                        "restart asked on the admin port: stopping the app, requests held"
                    );
                    self.machine.readiness_changed(false);
                    asked = Some(req);
                    match self.stop_app(&mut app).await {
                        Ok(status) => status,
                        Err(sig) => {
                            self.answer_restart(asked.take(), None);
                            return self.kill_and_reap(app, sig).await.exit_code();
                        }
                    }
                }
                Outcome::LivenessFailed(why) => {
                    // A hung app is stopped like any other, then restarted by the policy
                    // (moby#28400: unhealthy must mean restarted).
                    tracing::warn!(event = "liveness_failed", pid = app.pid.as_raw(), reason = %why, "the app failed its liveness probe; stopping it");
                    self.machine.readiness_changed(false);
                    match self.stop_app(&mut app).await {
                        Ok(status) => status,
                        Err(sig) => return self.kill_and_reap(app, sig).await.exit_code(),
                    }
                }
            };
            self.app_exited(&app, &status);
            if asked.is_none() && !self.machine.should_restart(&status) {
                return status.exit_code();
            }

            let delay = if asked.is_some() {
                Duration::ZERO
            } else {
                self.machine.restart_delay(Some(app.started.elapsed()))
            };
            self.machine.enter(Phase::Restarting);
            tracing::info!(
                event = "restarting",
                delay_ms = delay.as_millis() as u64,
                restarts = self.machine.restarts() + 1,
                "restarting the app in {} ms",
                delay.as_millis()
            );
            if let Some(sig) = self.backoff_wait(delay, &mut app.logs).await {
                tracing::info!(event = "stopping", signal = %sig, "stop requested while waiting to restart");
                self.answer_restart(asked.take(), None);
                return status.exit_code();
            }
            self.machine.count_restart();
        }
    }

    /// No command: tandem runs beside the app (a Nomad sidecar task): it follows the app's
    /// log files, proxies and probes it, and stops when told to. Exit code 0 on a stop; 69
    /// when the liveness probe fails and `restart.policy` is not `never`.
    async fn run_beside(&mut self) -> i32 {
        tracing::info!(
            event = "beside",
            "no command: following the app's logs beside it"
        );
        self.machine.enter(Phase::Running);
        if self.core.upgrade.generation > 0 {
            // After `tandem upgrade`: the app was there all along.
            self.core.health.app_adopted();
        } else {
            self.core.health.app_started();
        }
        let mut ready = self.core.health.ready();
        let mut liveness: Pin<Box<dyn Future<Output = ProbeStatus> + Send>> =
            Box::pin(self.core.health.liveness_failed());
        let mut probes = self.core.health.generation();
        loop {
            // A reload replaced the probes: watch the new liveness probe.
            if self.core.health.generation() != probes {
                probes = self.core.health.generation();
                liveness = Box::pin(self.core.health.liveness_failed());
            }
            let now = *ready.borrow_and_update();
            self.machine.readiness_changed(now);
            tokio::select! {
                ev = self.core.next_event() => match ev {
                    Event::Signal(SignalEvent::Stop(sig)) => {
                        self.begin_stopping(sig);
                        if let Err(sig) = self.quiesce().await {
                            tracing::warn!(event = "stopping", signal = %sig, "second stop signal: leaving now");
                        }
                        self.core.health.app_stopped();
                        return 0;
                    }
                    Event::Control(control::Request { action: control::Action::Upgrade { binary }, reply }) => {
                        // Returns only when refused or when no exec worked.
                        if let Err(why) = self.upgrade(None, binary, reply).await {
                            tracing::error!(event = "internal_error", error = %why, "no binary could take over after the hand-over");
                            return exit::INTERNAL;
                        }
                    }
                    other => self.on_event(other, None).await,
                },
                changed = ready.changed() => if changed.is_err() { std::future::pending::<()>().await },
                st = &mut liveness => {
                    if !matches!(self.core.cfg.restart.policy, RestartPolicy::Never) {
                        // Not ours to restart, but a restart was asked for: leave, so the
                        // orchestrator restarts tandem beside the app as it is now (a
                        // container joined to a restarted one's namespace must restart).
                        let code = crate::exit::BESIDE_UNAVAILABLE;
                        tracing::error!(event = "liveness_failed", reason = ?st.last_failure, exit_code = code, "the app failed its liveness probe; tandem exits for its orchestrator to restart it (restart.policy)");
                        self.core.health.app_stopped();
                        return code;
                    }
                    // Not ours to restart: say so, and let systemd's watchdog or the
                    // orchestrator's check act on /readyz.
                    tracing::warn!(event = "liveness_failed", reason = ?st.last_failure, "the app failed its liveness probe");
                    liveness = Box::pin(std::future::pending());
                }
            }
        }
    }

    fn start_app(&mut self, spec: &AppSpec) -> Result<App, child::SpawnError> {
        // The app's stdout/stderr are pipes that the log pipeline reads.
        let mut spawned = match self.core.reaper.spawn_app(spec, StdioMode::Pipe) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(event = "spawn_failed", error = %e, exit_code = e.exit_code(), transient = e.is_transient(), "cannot start the app");
                return Err(e);
            }
        };
        let exit = self.core.reaper.watch(spawned.pid);
        let logs = self.attach_logs(&mut spawned, self.machine.restarts());
        if let Some(guard) = &self.core.guard {
            guard.track(Some(spawned.pid));
        }
        tracing::info!(event = "started", pid = spawned.pid.as_raw(), restarts = self.machine.restarts(), command = %crate::config::layers::redact_text(&self.core.cfg.app.command.join(" ")), "app started");
        self.machine.app_started(spawned.pid);
        self.machine.enter(Phase::Running);
        // Fresh probes for this instance; without a readiness probe it is ready right away.
        self.core.health.app_started();
        Ok(App {
            pid: spawned.pid,
            exit,
            started: Instant::now(),
            logs,
        })
    }

    /// Run until the app exits, a stop is requested or liveness fails; follow readiness and
    /// forward signals meanwhile.
    async fn wait_running(&mut self, app: &mut App) -> Outcome {
        let mut ready = self.core.health.ready();
        let mut probes = self.core.health.generation();
        let mut liveness = Box::pin(self.core.health.liveness_failed());
        loop {
            // A reload replaced the probes: watch the new liveness probe.
            if self.core.health.generation() != probes {
                probes = self.core.health.generation();
                liveness = Box::pin(self.core.health.liveness_failed());
            }
            let now = *ready.borrow_and_update();
            self.machine.readiness_changed(now);
            tokio::select! {
                status = &mut app.exit => return Outcome::Exited(status.unwrap_or(LOST)),
                ev = self.core.next_event() => match ev {
                    Event::Signal(SignalEvent::Stop(sig)) => return Outcome::StopRequested(sig),
                    Event::Control(req) if req.action == control::Action::Restart => {
                        return Outcome::RestartRequested(req)
                    }
                    Event::Control(control::Request { action: control::Action::Upgrade { binary }, reply }) => {
                        // Returns only when refused (the app runs on) or when no exec worked.
                        if let Err(why) = self.upgrade(Some(app), binary, reply).await {
                            return Outcome::UpgradeFailed(why);
                        }
                    }
                    other => self.on_event(other, Some(app.pid)).await,
                },
                changed = ready.changed() => if changed.is_err() { std::future::pending::<()>().await },
                st = &mut liveness => return Outcome::LivenessFailed(st.last_failure.unwrap_or_default()),
            }
        }
    }

    /// The stop sequence. `received` is the signal that asked for it.
    async fn stop(&mut self, mut app: App, received: Signal) -> ExitStatus {
        self.begin_stopping(received);
        if let Err(sig) = self.quiesce().await {
            return self.kill_and_reap(app, sig).await;
        }
        let status = match self.stop_app(&mut app).await {
            Ok(status) => status,
            Err(sig) => return self.kill_and_reap(app, sig).await,
        };
        self.app_exited(&app, &status);
        status
    }

    /// Stopping: not ready (orchestrators deregister), STOPPING=1, more time from systemd.
    fn begin_stopping(&mut self, received: Signal) {
        self.machine.enter(Phase::Stopping);
        tracing::info!(event = "stopping", signal = %received, "stop requested");
    }

    /// `shutdown.delay` (still serving, not ready), then drain the proxy. A second stop
    /// signal cuts it short and is returned.
    async fn quiesce(&mut self) -> Result<(), Signal> {
        if !self.core.cfg.shutdown.delay.is_zero() {
            tracing::info!(
                event = "shutdown_delay",
                delay_ms = self.core.cfg.shutdown.delay.as_millis() as u64,
                "not ready; serving on while the orchestrator deregisters"
            );
            let delay = sleep(self.core.cfg.shutdown.delay);
            tokio::pin!(delay);
            loop {
                tokio::select! {
                    () = &mut delay => break,
                    ev = self.core.next_event() => match ev {
                        Event::Signal(SignalEvent::Stop(sig)) => return Err(sig),
                        other => self.on_event_if_running(other).await,
                    },
                }
            }
        }
        let Some(proxy) = self.parts.proxy.take_serving() else {
            return Ok(());
        };
        let drain = proxy.drain();
        tokio::pin!(drain);
        loop {
            tokio::select! {
                report = &mut drain => {
                    wiring::log_drain(&report);
                    return Ok(());
                }
                ev = self.core.next_event() => match ev {
                    Event::Signal(SignalEvent::Stop(sig)) => return Err(sig),
                    other => self.on_event_if_running(other).await,
                },
            }
        }
    }

    /// Send the stop signal and wait up to `stop_timeout`, then SIGKILL. `Err(signal)` when a
    /// second stop signal came first (the caller kills at once).
    async fn stop_app(&mut self, app: &mut App) -> Result<ExitStatus, Signal> {
        let stop_signal = self.core.cfg.app.stop_signal.0;
        let began = Instant::now();
        if let Err(e) = child::stop::signal_group(app.pid, stop_signal) {
            tracing::warn!(event = "signal_failed", signal = %stop_signal, error = %e, "cannot signal the app");
        }
        tracing::info!(event = "stop_signal_sent", signal = %stop_signal, pid = app.pid.as_raw(), timeout_ms = self.core.cfg.app.stop_timeout.as_millis() as u64, "asked the app to stop");
        let deadline = sleep(self.core.cfg.app.stop_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                status = &mut app.exit => return Ok(status.unwrap_or(LOST)),
                () = &mut deadline => {
                    self.kill(app, "stop_timeout", began);
                    return Ok((&mut app.exit).await.unwrap_or(LOST));
                }
                ev = self.core.next_event() => match ev {
                    Event::Signal(SignalEvent::Stop(sig)) => return Err(sig),
                    other => self.on_event(other, Some(app.pid)).await,
                },
            }
        }
    }

    /// A second stop signal: SIGKILL the app's group now and collect its status.
    async fn kill_and_reap(&mut self, mut app: App, sig: Signal) -> ExitStatus {
        tracing::warn!(event = "stopping", signal = %sig, "second stop signal");
        self.kill(&app, "second_stop_signal", app.started);
        let status = (&mut app.exit).await.unwrap_or(LOST);
        self.app_exited(&app, &status);
        status
    }

    fn kill(&self, app: &App, reason: &str, began: Instant) {
        if let Err(e) = child::stop::signal_group(app.pid, Signal::SIGKILL) {
            tracing::warn!(event = "signal_failed", signal = "SIGKILL", error = %e, "cannot kill the app");
        }
        tracing::warn!(
            event = "killed",
            reason,
            pid = app.pid.as_raw(),
            elapsed_ms = began.elapsed().as_millis() as u64,
            "sent SIGKILL to the app's process group"
        );
    }

    /// A signal that is not a stop request: tandem's own reload on SIGHUP, then forwarding to
    /// the app's main process `pid` when there is one and the signal is in the forward list;
    /// or an admin action.
    async fn on_event(&mut self, ev: Event, pid: Option<Pid>) {
        match ev {
            Event::Signal(SignalEvent::Stop(_)) => {}
            Event::Signal(SignalEvent::Reload) => self.on_hup(false, pid).await,
            Event::Signal(SignalEvent::Forward(Signal::SIGHUP)) => self.on_hup(true, pid).await,
            Event::Signal(SignalEvent::Forward(sig)) => match pid {
                Some(pid) => self.forward(pid, sig),
                None => tracing::debug!(signal = %sig, "no app running; signal not forwarded"),
            },
            Event::Control(req) => {
                let reply = match req.action {
                    control::Action::Reload => {
                        control::Reply::Reload(self.reload(reload::Trigger::Admin).await)
                    }
                    // Taken by `wait_running` while the app runs; anywhere else there is none
                    // to restart.
                    // Taken by `wait_running` too: the hand-over is of a running app.
                    control::Action::Upgrade { ref binary } => {
                        control::Reply::Upgrade(control::UpgradeAccepted {
                            ok: false,
                            error: Some(format!(
                                "tandem upgrades while the app runs (or beside it), not in phase {}",
                                self.machine.phase().as_str(),
                            )),
                            binary: binary.clone().unwrap_or_default(),
                            generation: self.core.upgrade.generation,
                        })
                    }
                    control::Action::Restart => control::Reply::Restart(control::RestartOutcome {
                        ok: false,
                        error: Some(format!(
                            "no app running to restart (phase {})",
                            self.machine.phase().as_str()
                        )),
                        pid: None,
                        restarts: self.machine.restarts(),
                    }),
                };
                // The asker may have given up waiting: a reload's result is on /status too.
                let _ = req.reply.send(reply);
            }
        }
    }

    /// Answer an asked restart (if one is waiting): the new app's pid, or None when none
    /// started.
    fn answer_restart(&self, asked: Option<control::Request>, pid: Option<Pid>) {
        let Some(req) = asked else { return };
        let outcome = control::RestartOutcome {
            ok: pid.is_some(),
            error: pid
                .is_none()
                .then(|| "the app was stopped but no new one started (see the log)".to_string()),
            pid: pid.map(Pid::as_raw),
            restarts: self.machine.restarts(),
        };
        let _ = req.reply.send(control::Reply::Restart(outcome));
    }

    async fn on_event_if_running(&mut self, ev: Event) {
        let pid = self.machine.app_pid();
        self.on_event(ev, pid).await;
    }

    fn forward(&self, pid: Pid, sig: Signal) {
        tracing::info!(event = "signal_forwarded", signal = %sig, pid = pid.as_raw(), "forwarding signal to the app");
        if let Err(e) = child::stop::signal_process(pid, sig) {
            tracing::warn!(event = "signal_failed", signal = %sig, error = %e, "cannot forward signal");
        }
    }

    /// logrotate's postrotate HUP: tandem's own log files are reopened too, and the proxy's
    /// certificates, keys and auth files are reloaded now rather than at the next poll.
    fn reopen_on_hup(&self, sig: Signal) {
        if sig != Signal::SIGHUP {
            return;
        }
        self.parts.logs.reopen();
        // Each failure is logged by the proxy, naming listener, key and file; the previous
        // contents stay in use.
        let failed = self.parts.proxy.serving().map_or(0, |p| p.reload().len());
        tracing::info!(
            event = "reloaded",
            failed,
            "SIGHUP: log files reopened, proxy files reloaded"
        );
    }

    /// Log the exit and clear what the app left behind.
    fn app_exited(&mut self, app: &App, status: &ExitStatus) {
        // First, before the proxy's gate closes: the requests in flight count this exit
        // against their replays (query-of-death protection), and the log names them.
        let in_flight = self
            .parts
            .proxy
            .serving()
            .map(tandem_proxy::Serving::app_exited)
            .unwrap_or_default();
        tracing::info!(
            event = "exited",
            pid = app.pid.as_raw(),
            exit_code = status.exit_code(),
            code = status.code,
            signal = status.signal,
            core_dumped = status.core_dumped,
            ran_ms = app.started.elapsed().as_millis() as u64,
            in_flight = in_flight.len(),
            in_flight_requests = %in_flight_summary(&in_flight),
            "app exited"
        );
        if self.core.cfg.app.kill_group_on_exit && child::stop::group_alive(app.pid) {
            // What the app forked and left in its group would hold its port and pipes.
            tracing::info!(
                event = "group_killed",
                pgid = app.pid.as_raw(),
                "killing what is left of the app's process group"
            );
            let _ = nix::sys::signal::killpg(app.pid, Signal::SIGKILL);
        }
        if let Some(guard) = &self.core.guard {
            guard.track(None);
        }
        self.core.health.app_stopped();
        self.machine.app_exited(status);
    }

    /// Sleep `delay`, and until the last run's readers have delivered its records, so they
    /// come before the next run's (at most `logs.exit_timeout` from now, as at exit: a process
    /// that left the app's group may hold a pipe open), unless a stop signal comes first (then
    /// return it).
    async fn backoff_wait(
        &mut self,
        delay: Duration,
        delivered: &mut [Delivered],
    ) -> Option<Signal> {
        let deadline = Instant::now() + self.core.cfg.logs.exit_timeout;
        let ready = restart_due(delay, delivered, deadline);
        tokio::pin!(ready);
        loop {
            tokio::select! {
                all = &mut ready => {
                    if !all {
                        tracing::warn!(event = "logs_still_open", "a pipe of the last run is still open (held by a process outside its group?); its later records may mix with the next run's");
                    }
                    return None;
                }
                ev = self.core.next_event() => match ev {
                    Event::Signal(SignalEvent::Stop(sig)) => return Some(sig),
                    other => self.on_event(other, None).await,
                },
            }
        }
    }

    /// Hand a process's pipes to the log pipeline as instance `restart_count`; the readers'
    /// ends, to wait on at a restart.
    fn attach_logs(&mut self, spawned: &mut child::Spawned, restart_count: u32) -> Vec<Delivered> {
        let instance = AppInstance {
            pid: spawned.pid.as_raw() as u32,
            restart_count,
        };
        let mut delivered = Vec::new();
        for (stream, fd) in [
            (Stream::Stdout, spawned.stdout.take()),
            (Stream::Stderr, spawned.stderr.take()),
        ] {
            if let Some(fd) = fd {
                match self.parts.logs.attach(stream, fd, instance) {
                    Ok(d) => delivered.push(d),
                    Err(e) => {
                        tracing::error!(event = "logs_failed", error = %e, "cannot read the app's output; it is lost");
                    }
                }
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_restart_is_due_after_exactly_the_back_off() {
        let begin = Instant::now();
        let deadline = begin + Duration::from_secs(5);
        let due = restart_due(Duration::from_millis(400), &mut [], deadline);
        tokio::pin!(due);
        assert!(
            tokio::time::timeout(Duration::from_millis(399), &mut due)
                .await
                .is_err(),
            "due before its back-off"
        );
        assert!(due.await, "nothing left to deliver");
        assert_eq!(begin.elapsed(), Duration::from_millis(400));
    }
}
