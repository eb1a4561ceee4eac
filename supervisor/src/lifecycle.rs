//! The lifecycle: the one state machine that decides the order of everything tandem does.
//!
//! ```text
//! Starting ─▶ start log pipeline ─▶ [OTLP pass-through: bind, set the app's OTEL_* env]
//!    ─▶ bind proxy listeners (held: not ready) ─▶ bind admin ─▶ spawn app ─▶ Running
//!    ─▶ readiness probe passes ─▶ ready: proxy forwards, READY=1
//! Running ── app exits, or liveness fails (then: stop it) ─▶ policy says restart?
//!    │        ├─ yes ─▶ Restarting: not ready, proxy holds requests; backoff, and the
//!    │        │         last run's records delivered (bounded) ─▶ spawn ...
//!    │        └─ no ─▶ exit with the app's code
//!    (a spawn that fails for want of fds, processes or memory is a failed start: the same
//!     policy, back-off and start limit, not tandem's exit 70)
//!    └─ SIGTERM/INT/QUIT ─▶ Stopping: STOPPING=1, /readyz 503 ─▶ shutdown.delay
//!         ─▶ drain proxy ─▶ stop_signal to the app's group ─▶ stop_timeout ─▶ SIGKILL
//!         ─▶ read pipes to EOF, flush logs ─▶ forward the pass-through's queue
//!         ─▶ flush OTLP (spans, logs, metrics) ─▶ exit(code)
//! ```
//! Other modules only offer operations (bind, serve, drain, spawn, probe, flush); this file
//! alone decides their order. A second stop signal at any point of Stopping SIGKILLs at once.
//! Invariant: [`run`] is driven by `block_on` on the main thread, because the app's
//! parent-death signal is tied to the thread that spawned it (see `child::spawn`).
//! The current [`Status`] is published on a `watch` channel: `/status`, sd_notify and tests
//! observe the phases from there, never by timing.
use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use prometheus_client::registry::Registry;
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use tandem_proxy::{CancellationToken, Hooks, Inbound, Serving};
use tokio::{
    sync::{oneshot, watch},
    time::{sleep, Instant},
};

use crate::{
    admin::AdminState,
    child::{self, AppSpec, ExitStatus, Guard, Reaper, StdioMode},
    config::{Config, RestartPolicy},
    exit,
    health::{
        notify::Notifier,
        probe::{ExitWatcher, ProbeStatus},
        HealthMonitor,
    },
    logs::{AppInstance, Delivered, Level, LogContext, LogsError, Pipeline, Stream},
    metrics::{ExitLabels, SupervisorMetrics},
    passthrough::Passthrough,
    restart::{Backoff, StartLimit},
    signals::{SignalEvent, Signals},
};

/// Where the lifecycle is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Binding, starting the pipeline, spawning the app for the first time.
    Starting,
    /// The app runs.
    Running,
    /// The app exited and will be started again after a backoff.
    Restarting,
    /// A stop was requested: draining, then stopping the app.
    Stopping,
    /// The app is gone for good; tandem is about to exit.
    Stopped,
}

impl Phase {
    /// The phase's name as `/status`, metrics and sd_notify STATUS= show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Restarting => "restarting",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        }
    }
}

/// What the lifecycle publishes about itself.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub phase: Phase,
    /// Whether the app takes traffic: running and passing its readiness probe (if any).
    pub ready: bool,
    /// The app's pid while it runs.
    pub app_pid: Option<i32>,
    /// How many times the app was restarted.
    pub restarts: u32,
    /// The exit code of the app's last run (128+N for signal N).
    pub last_exit_code: Option<i32>,
    /// The proxy's listeners: name and bound address.
    pub listeners: Vec<(String, String)>,
}

/// Variables of tandem's environment that are tandem's alone: the app speaking on systemd's
/// notify socket would confuse the unit's state (NotifyAccess=main would also drop it).
const TANDEM_ONLY_ENV: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

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
    StopRequested(Signal),
    LivenessFailed(String),
}

/// What the lifecycle is given besides the config.
pub struct Options {
    /// The guard process, forked by `main` while tandem was single-threaded.
    pub guard: Option<Guard>,
    /// The admin address was set by the user (a failed bind is then fatal, not a warning).
    pub admin_explicit: bool,
}

/// Supervise the app described by `cfg` until it is done; returns tandem's exit code.
pub async fn run(cfg: Config, opts: Options) -> i32 {
    let mut sup = match Supervisor::new(cfg, opts) {
        Ok(sup) => sup,
        Err(code) => return code,
    };
    let code = sup.run().await;
    // Every way out passes here, in this order: no more traffic, then every line the app
    // wrote is read to EOF and flushed (each bounded).
    sup.finish_proxy().await;
    sup.finish_logs().await;
    sup.finish_passthrough().await;
    // Last: the spans of the drained requests and the records of the flushed logs are now
    // all in the export queues.
    sup.finish_telemetry().await;
    sup.finish(code)
}

struct Supervisor {
    cfg: Config,
    spec: Option<AppSpec>,
    reaper: Reaper,
    signals: Signals,
    guard: Option<crate::child::guard::SharedGuard>,
    status: watch::Sender<Status>,
    metrics: SupervisorMetrics,
    registry: Option<Registry>,
    admin_explicit: bool,
    backoff: Backoff,
    limit: StartLimit,
    rng: StdRng,
    restarts: u32,
    /// The log pipeline; None until started (and after it was finished at exit).
    /// What `Supervisor::new` read of this process for the OTLP resource, handed on to the
    /// log pipeline when it starts (taken then).
    log_ctx: Option<LogContext>,
    logs: Option<Pipeline>,
    /// The proxy while it serves; taken when drained.
    proxy: Option<Serving>,
    /// The proxy's gate: true while the app can take requests. Unlike `/readyz` it stays
    /// true while draining, so requests still arriving are served, not held.
    proxy_ready: watch::Sender<bool>,
    health: HealthMonitor,
    notifier: Notifier,
    /// READY=1 was sent (once per tandem, as systemd expects).
    notified_ready: bool,
    watchdog: Option<tokio::task::JoinHandle<()>>,
    /// The access log's way into the pipeline (its drop count goes to /metrics).
    access_injector: Option<crate::logs::Injector>,
    /// The OTLP pass-through for the app's own telemetry, when enabled.
    passthrough: Option<Passthrough>,
    /// OTLP export settings, resolved (with `OTEL_*`) before anything starts; None: off.
    otlp: Option<crate::telemetry::Settings>,
    /// The running OTLP export.
    telemetry: Option<crate::telemetry::Telemetry>,
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

/// Exit statuses for exec probes come from the one reaper (see `child::reap`).
struct ReaperExits(Reaper);

impl ExitWatcher for ReaperExits {
    fn exited(&self, pid: u32) -> Pin<Box<dyn Future<Output = Option<i32>> + Send>> {
        let rx = self.0.watch(Pid::from_raw(pid as i32));
        Box::pin(async move { rx.await.ok().map(|s| s.exit_code()) })
    }
}

// === impl Supervisor ===

impl Supervisor {
    fn new(cfg: Config, opts: Options) -> Result<Self, i32> {
        let mut registry = Registry::default();
        let metrics = SupervisorMetrics::register(&mut registry);
        let reaper = Reaper::start(metrics.orphans_reaped.clone())
            .map_err(|e| internal("cannot watch SIGCHLD", e))?;
        // The guard's exit is claimed (not counted as an orphan) and, while tandem runs, a
        // killed guard is replaced.
        let guard = opts
            .guard
            .map(|g| crate::child::guard::keep_alive(g, reaper.clone()));
        let forward: Vec<Signal> = cfg.app.forward_signals.iter().map(|s| s.0).collect();
        let signals = Signals::install(&forward)
            .map_err(|e| internal("cannot install signal handlers", e))?;
        let mut checks = cfg.health.validate().map_err(|e| {
            tracing::error!(event = "config_error", "{e}");
            exit::CONFIG
        })?;
        if checks.readiness.is_none() {
            checks.readiness = cfg.implicit_readiness();
            if let Some(p) = &checks.readiness {
                tracing::debug!(event = "implicit_readiness", probe = %p, "no readiness probe configured: the app is ready once its upstream accepts connections");
            }
        }
        let health = HealthMonitor::new(checks, Arc::new(ReaperExits(reaper.clone())));
        let notifier = Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!(event = "notify_unavailable", error = %e, "sd_notify disabled");
            Notifier::disabled()
        });
        let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
        // Host name, container id, systemd and Nomad identity: read once, for the OTLP
        // resource here and the log pipeline's records in `start_logs`.
        let log_ctx = LogContext::from_process(cfg.service_name());
        let otlp = crate::telemetry::Settings::resolve(
            &cfg.telemetry,
            cfg.service.version.as_deref(),
            crate::otlp::resource::of_process(&log_ctx.service, &log_ctx.resource),
            &env,
        )
        .map_err(|e| {
            tracing::error!(event = "config_error", "{e}");
            exit::CONFIG
        })?;
        let spec = cfg
            .app
            .command
            .split_first()
            .map(|(program, args)| AppSpec {
                program: program.clone(),
                args: args.to_vec(),
                workdir: cfg.app.workdir.clone(),
                env: cfg.app.env.clone(),
                env_remove: TANDEM_ONLY_ENV.iter().map(|s| s.to_string()).collect(),
                user: cfg.app.user.clone(),
                group: cfg.app.group.clone(),
            });
        Ok(Self {
            backoff: Backoff::new(&cfg.restart),
            limit: StartLimit::new(&cfg.restart),
            cfg,
            spec,
            reaper,
            signals,
            guard,
            status: watch::channel(Status::initial()).0,
            metrics,
            registry: Some(registry),
            admin_explicit: opts.admin_explicit,
            rng: StdRng::from_entropy(),
            restarts: 0,
            log_ctx: Some(log_ctx),
            logs: None,
            proxy: None,
            proxy_ready: watch::channel(false).0,
            health,
            notifier,
            notified_ready: false,
            watchdog: None,
            access_injector: None,
            passthrough: None,
            otlp,
            telemetry: None,
        })
    }

    /// The state machine, top to bottom. Returns the exit code.
    async fn run(&mut self) -> i32 {
        self.set_phase(Phase::Starting, None);
        // OTLP export before its users: the log pipeline's sink and the proxy's tracer.
        if let Err(code) = self.start_telemetry() {
            return code;
        }
        // The log pipeline starts first, so the first line (and the first access record)
        // already has a reader.
        if let Err(code) = self.start_logs() {
            return code;
        }
        // Before the app starts: its SDK exports to the pass-through from its first span.
        if let Err(code) = self.start_passthrough().await {
            return code;
        }
        // Listeners are bound before the app starts, while not ready: a client's connection
        // waits in the proxy's hold, an orchestrator's probe gets a 503, none is refused.
        if let Err(code) = self.start_proxy().await {
            return code;
        }
        if let Err(code) = self.start_admin().await {
            return code;
        }
        let Some(spec) = self.spec.clone() else {
            return self.run_beside().await;
        };
        loop {
            if !self.limit.try_start(Instant::now()) {
                tracing::error!(
                    event = "start_limit_hit",
                    burst = self.cfg.restart.start_limit_burst,
                    interval = %humantime::format_duration(self.cfg.restart.start_limit_interval),
                    "the app was started too often; giving up so the orchestrator can take over"
                );
                return exit::START_LIMIT;
            }
            let mut app = match self.start_app(&spec) {
                Ok(app) => app,
                Err(e) if e.is_transient() && self.cfg.restart.policy != RestartPolicy::Never => {
                    // Out of fds, processes or memory: a failed start, tried again after the
                    // back-off and under the start limit, as an app that crashed at start.
                    let delay = self.backoff.next_delay(&mut self.rng);
                    self.set_phase(Phase::Restarting, None);
                    tracing::info!(
                        event = "restarting",
                        delay_ms = delay.as_millis() as u64,
                        restarts = self.restarts + 1,
                        "starting the app failed; trying again in {} ms",
                        delay.as_millis()
                    );
                    if let Some(sig) = self.backoff_wait(delay, &mut []).await {
                        tracing::info!(event = "stopping", signal = %sig, "stop requested while waiting to restart");
                        self.set_phase(Phase::Stopping, None);
                        return e.exit_code();
                    }
                    self.restarts += 1;
                    self.metrics.restarts.inc();
                    continue;
                }
                Err(e) => return e.exit_code(),
            };

            let status = match self.wait_running(&mut app).await {
                Outcome::StopRequested(sig) => return self.stop(app, sig).await.exit_code(),
                Outcome::Exited(status) => status,
                Outcome::LivenessFailed(why) => {
                    // A hung app is stopped like any other, then restarted by the policy
                    // (moby#28400: unhealthy must mean restarted).
                    tracing::warn!(event = "liveness_failed", pid = app.pid.as_raw(), reason = %why, "the app failed its liveness probe; stopping it");
                    self.readiness_changed(false);
                    match self.stop_app(&mut app).await {
                        Ok(status) => status,
                        Err(sig) => return self.kill_and_reap(app, sig).await.exit_code(),
                    }
                }
            };
            self.app_exited(&app, &status);
            if !self.should_restart(&status) {
                return status.exit_code();
            }

            if app.started.elapsed() >= self.cfg.restart.reset_after {
                self.backoff.reset();
            }
            let delay = self.backoff.next_delay(&mut self.rng);
            self.set_phase(Phase::Restarting, None);
            tracing::info!(
                event = "restarting",
                delay_ms = delay.as_millis() as u64,
                restarts = self.restarts + 1,
                "restarting the app in {} ms",
                delay.as_millis()
            );
            if let Some(sig) = self.backoff_wait(delay, &mut app.logs).await {
                tracing::info!(event = "stopping", signal = %sig, "stop requested while waiting to restart");
                self.set_phase(Phase::Stopping, None);
                return status.exit_code();
            }
            self.restarts += 1;
            self.metrics.restarts.inc();
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
        self.set_phase(Phase::Running, None);
        self.health.app_started();
        let mut ready = self.health.ready();
        let mut liveness: Pin<Box<dyn Future<Output = ProbeStatus> + Send>> =
            Box::pin(self.health.liveness_failed());
        loop {
            let now = *ready.borrow_and_update();
            self.readiness_changed(now);
            tokio::select! {
                ev = self.signals.recv() => match ev {
                    SignalEvent::Stop(sig) => {
                        self.begin_stopping(sig);
                        if let Err(sig) = self.quiesce().await {
                            tracing::warn!(event = "stopping", signal = %sig, "second stop signal: leaving now");
                        }
                        self.health.app_stopped();
                        return 0;
                    }
                    other => self.on_signal(other, None),
                },
                changed = ready.changed() => if changed.is_err() { std::future::pending::<()>().await },
                st = &mut liveness => {
                    if !matches!(self.cfg.restart.policy, RestartPolicy::Never) {
                        // Not ours to restart, but a restart was asked for: leave, so the
                        // orchestrator restarts tandem beside the app as it is now (a
                        // container joined to a restarted one's namespace must restart).
                        let code = crate::exit::BESIDE_UNAVAILABLE;
                        tracing::error!(event = "liveness_failed", reason = ?st.last_failure, exit_code = code, "the app failed its liveness probe; tandem exits for its orchestrator to restart it (restart.policy)");
                        self.set_phase(Phase::Stopping, None);
                        self.health.app_stopped();
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
        let stdio = if self.logs.is_some() {
            StdioMode::Pipe
        } else {
            StdioMode::Inherit
        };
        let spawned = {
            // std reaps a child whose exec failed itself: keep the reaper's waitpid(-1) off it.
            let _hold = self.reaper.hold_for_spawn();
            child::spawn(spec, stdio)
        };
        let mut spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(event = "spawn_failed", error = %e, exit_code = e.exit_code(), transient = e.is_transient(), "cannot start the app");
                return Err(e);
            }
        };
        let exit = self.reaper.watch(spawned.pid);
        let logs = self.attach_logs(&mut spawned);
        if let Some(guard) = &self.guard {
            guard.track(Some(spawned.pid));
        }
        tracing::info!(event = "started", pid = spawned.pid.as_raw(), restarts = self.restarts, command = %crate::config::layers::redact_text(&self.cfg.app.command.join(" ")), "app started");
        self.metrics.starts.inc();
        self.metrics.app_up.set(1);
        self.set_phase(Phase::Running, Some(spawned.pid));
        // Fresh probes for this instance; without a readiness probe it is ready right away.
        self.health.app_started();
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
        let mut ready = self.health.ready();
        let liveness = self.health.liveness_failed();
        tokio::pin!(liveness);
        loop {
            let now = *ready.borrow_and_update();
            self.readiness_changed(now);
            tokio::select! {
                status = &mut app.exit => return Outcome::Exited(status.unwrap_or(LOST)),
                ev = self.signals.recv() => match ev {
                    SignalEvent::Stop(sig) => return Outcome::StopRequested(sig),
                    other => self.on_signal(other, Some(app.pid)),
                },
                changed = ready.changed() => if changed.is_err() { std::future::pending::<()>().await },
                st = &mut liveness => return Outcome::LivenessFailed(st.last_failure.unwrap_or_default()),
            }
        }
    }

    /// Readiness of the app changed (or may have): gate the proxy, `/readyz` and READY=1.
    fn readiness_changed(&mut self, ready: bool) {
        if ready == self.status.borrow().ready {
            return;
        }
        self.set_ready(ready);
        self.proxy_ready.send_replace(ready);
        if ready {
            tracing::info!(event = "ready", "the app is ready");
            if !self.notified_ready {
                self.notified_ready = true;
                if let Err(e) = self.notifier.ready() {
                    tracing::warn!(event = "notify_failed", error = %e, "cannot send READY=1");
                }
                // Watchdog pings only while the app is healthy: a hung app makes systemd act.
                self.watchdog = self.notifier.spawn_watchdog(self.health.healthy());
            }
        } else {
            tracing::warn!(event = "not_ready", "the app is not ready");
        }
    }

    /// The stop sequence. `received` is the signal that asked for it.
    async fn stop(&mut self, mut app: App, received: Signal) -> ExitStatus {
        self.begin_stopping(received);
        self.metrics.set_phase(Phase::Stopping);
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
        let pid = self.status.borrow().app_pid.map(Pid::from_raw);
        self.set_phase(Phase::Stopping, pid);
        tracing::info!(event = "stopping", signal = %received, "stop requested");
        let _ = self.notifier.stopping();
        let drain = self
            .cfg
            .proxy
            .listeners
            .iter()
            .map(|l| l.drain_timeout)
            .max()
            .unwrap_or_default();
        let _ = self.notifier.extend_timeout(
            // Saturating: each value is bounded at load, their sum need not fit a clock.
            self.cfg
                .shutdown
                .delay
                .saturating_add(drain)
                .saturating_add(self.cfg.app.stop_timeout)
                .saturating_add(self.cfg.logs.exit_timeout.saturating_mul(2))
                .saturating_add(self.cfg.telemetry.passthrough.shutdown_timeout),
        );
    }

    /// `shutdown.delay` (still serving, not ready), then drain the proxy. A second stop
    /// signal cuts it short and is returned.
    async fn quiesce(&mut self) -> Result<(), Signal> {
        if !self.cfg.shutdown.delay.is_zero() {
            tracing::info!(
                event = "shutdown_delay",
                delay_ms = self.cfg.shutdown.delay.as_millis() as u64,
                "not ready; serving on while the orchestrator deregisters"
            );
            let delay = sleep(self.cfg.shutdown.delay);
            tokio::pin!(delay);
            loop {
                tokio::select! {
                    () = &mut delay => break,
                    ev = self.signals.recv() => match ev {
                        SignalEvent::Stop(sig) => return Err(sig),
                        other => self.on_signal_if_running(other),
                    },
                }
            }
        }
        let Some(proxy) = self.proxy.take() else {
            return Ok(());
        };
        let drain = proxy.drain();
        tokio::pin!(drain);
        loop {
            tokio::select! {
                report = &mut drain => {
                    log_drain(&report);
                    return Ok(());
                }
                ev = self.signals.recv() => match ev {
                    SignalEvent::Stop(sig) => return Err(sig),
                    other => self.on_signal_if_running(other),
                },
            }
        }
    }

    /// Send the stop signal and wait up to `stop_timeout`, then SIGKILL. `Err(signal)` when a
    /// second stop signal came first (the caller kills at once).
    async fn stop_app(&mut self, app: &mut App) -> Result<ExitStatus, Signal> {
        let stop_signal = self.cfg.app.stop_signal.0;
        let began = Instant::now();
        if let Err(e) = child::stop::signal_group(app.pid, stop_signal) {
            tracing::warn!(event = "signal_failed", signal = %stop_signal, error = %e, "cannot signal the app");
        }
        tracing::info!(event = "stop_signal_sent", signal = %stop_signal, pid = app.pid.as_raw(), timeout_ms = self.cfg.app.stop_timeout.as_millis() as u64, "asked the app to stop");
        let deadline = sleep(self.cfg.app.stop_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                status = &mut app.exit => return Ok(status.unwrap_or(LOST)),
                () = &mut deadline => {
                    self.kill(app, "stop_timeout", began);
                    return Ok((&mut app.exit).await.unwrap_or(LOST));
                }
                ev = self.signals.recv() => match ev {
                    SignalEvent::Stop(sig) => return Err(sig),
                    other => self.on_signal(other, Some(app.pid)),
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
    /// the app's main process `pid` when there is one and the signal is in the forward list.
    fn on_signal(&self, ev: SignalEvent, pid: Option<Pid>) {
        match ev {
            SignalEvent::Stop(_) => {}
            SignalEvent::Reload => self.reopen_on_hup(Signal::SIGHUP),
            SignalEvent::Forward(sig) => {
                self.reopen_on_hup(sig);
                match pid {
                    Some(pid) => self.forward(pid, sig),
                    None => tracing::debug!(signal = %sig, "no app running; signal not forwarded"),
                }
            }
        }
    }

    fn on_signal_if_running(&self, ev: SignalEvent) {
        let pid = self.status.borrow().app_pid.map(Pid::from_raw);
        self.on_signal(ev, pid);
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
        if let Some(logs) = &self.logs {
            logs.reopen();
        }
        // Each failure is logged by the proxy, naming listener, key and file; the previous
        // contents stay in use.
        let failed = self.proxy.as_ref().map_or(0, |p| p.reload().len());
        tracing::info!(
            event = "reloaded",
            failed,
            "SIGHUP: log files reopened, proxy files reloaded"
        );
    }

    /// Bind the proxy's listeners and serve them, gated by `proxy_ready` (false for now).
    async fn start_proxy(&mut self) -> Result<(), i32> {
        if self.cfg.proxy.listeners.is_empty() {
            return Ok(());
        }
        let bound = match Inbound::bind(&self.cfg.proxy.listeners).await {
            Ok(b) => b,
            Err(e @ tandem_proxy::ProxyError::File(_)) => {
                // A missing or bad certificate, key, CA, JWKS or secrets file is config.
                tracing::error!(event = "config_error", error = %e, "cannot load a file the proxy needs");
                return Err(exit::CONFIG);
            }
            Err(e) => {
                tracing::error!(event = "bind_failed", error = %e, "cannot bind the proxy's listeners");
                return Err(exit::INTERNAL);
            }
        };
        crate::memory::spawn_trimmer();
        let mut listeners = Vec::new();
        for (name, addr) in bound.local_addrs() {
            tracing::info!(event = "proxy_listening", listener = %name, addr = %addr, "proxy listening");
            listeners.push((name, addr.to_string()));
        }
        self.status.send_modify(|s| s.listeners = listeners);
        let registry = self
            .registry
            .as_mut()
            .expect("the registry is taken by the admin port, after the proxy");
        let mut hooks = Hooks::new().with_metrics(registry);
        if let Some(tracer) = self.telemetry.as_ref().and_then(|t| t.tracer()) {
            hooks = hooks.with_tracer(tracer);
        }
        if self.cfg.proxy.access_log {
            if let Some(logs) = &self.logs {
                let injector = logs.injector();
                self.access_injector = Some(injector.clone());
                hooks = hooks.with_access_log(move |r| {
                    let level = if r.status >= 500 || r.cause.is_some() {
                        Level::Warn
                    } else {
                        Level::Info
                    };
                    let msg = format!("{} {} {}", r.method, r.path, r.status);
                    let fields = match serde_json::to_value(r) {
                        Ok(serde_json::Value::Object(mut m)) => {
                            m.insert("kind".into(), "access".into());
                            m
                        }
                        _ => serde_json::Map::new(),
                    };
                    injector.emit(level, msg, fields);
                });
            }
        }
        self.proxy = Some(tandem_proxy::serve(
            bound,
            self.proxy_ready.subscribe(),
            CancellationToken::new(),
            hooks,
        ));
        Ok(())
    }

    /// Bind the OTLP pass-through and point the app's environment at it.
    async fn start_passthrough(&mut self) -> Result<(), i32> {
        let cfg = &self.cfg.telemetry.passthrough;
        if !cfg.enabled {
            return Ok(());
        }
        let registry = self
            .registry
            .as_mut()
            .expect("the registry is taken by the admin port, after the pass-through");
        let env = |k: &str| std::env::var(k).ok();
        let ctx = LogContext::from_process(self.cfg.service_name());
        let resource = crate::otlp::resource::of_process(&ctx.service, &ctx.resource);
        match Passthrough::start(cfg, &resource, &env, registry).await {
            Ok(p) => {
                if let Some(spec) = &mut self.spec {
                    p.app_env(&mut spec.env, &mut spec.env_remove);
                }
                self.passthrough = Some(p);
                Ok(())
            }
            Err(e) if e.is_config() => {
                tracing::error!(event = "config_error", error = %e, "cannot start the OTLP pass-through");
                Err(exit::CONFIG)
            }
            Err(e) => {
                tracing::error!(event = "bind_failed", error = %e, "cannot start the OTLP pass-through");
                Err(exit::INTERNAL)
            }
        }
    }

    /// After the app and its logs are done: forward what it sent last (bounded).
    async fn finish_passthrough(&mut self) {
        if let Some(p) = self.passthrough.take() {
            p.shutdown().await;
        }
    }

    /// On the way out: a proxy not drained yet (the app exited for good) is drained now, so
    /// held requests get their answer instead of a reset.
    async fn finish_proxy(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            log_drain(&proxy.drain().await);
        }
    }

    /// Bind the admin port and serve it for the rest of tandem's life.
    async fn start_admin(&mut self) -> Result<(), i32> {
        let Some(mut registry) = self.registry.take() else {
            return Ok(());
        };
        if let Some(logs) = &self.logs {
            registry.register_collector(Box::new(crate::metrics::LogsCollector {
                counters: logs.counters(),
                injected_dropped: self.access_injector.clone(),
            }));
        }
        let registry = Arc::new(registry);
        if let Some(t) = &mut self.telemetry {
            // Every family is registered by now: the OTLP push reads the same registry.
            if let Err(e) = t.start_metrics(registry.clone()) {
                tracing::error!(event = "otlp_failed", error = %e, "cannot start the OTLP metrics push");
                return Err(exit::CONFIG);
            }
        }
        let listen = self.cfg.admin.listen.trim();
        if listen.is_empty() {
            return Ok(());
        }
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) if !self.admin_explicit => {
                // The default address is a convenience: a second tandem on the host must
                // still run its app.
                tracing::warn!(event = "admin_unavailable", listen, error = %e, "admin port not bound (set admin.listen to choose another)");
                return Ok(());
            }
            Err(e) => {
                tracing::error!(event = "bind_failed", listen, error = %e, "cannot bind admin.listen");
                return Err(exit::INTERNAL);
            }
        };
        let addr = crate::admin::local_addr(&listener)
            .map(|a| a.to_string())
            .unwrap_or_default();
        tracing::info!(
            event = "admin_listening",
            addr,
            "admin port: /healthz /readyz /metrics /status"
        );
        let state = Arc::new(AdminState {
            service: self.cfg.service_name(),
            status: self.status.subscribe(),
            registry,
            started: std::time::Instant::now(),
        });
        // Off loopback the admin port requires a bearer token (config validation made sure a
        // token file exists and is usable).
        let token = match crate::admin::load_token(&self.cfg.admin) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(event = "config_error", "{e}");
                return Err(exit::CONFIG);
            }
        };
        tokio::spawn(crate::admin::serve_with_token(listener, state, token));
        Ok(())
    }

    fn set_ready(&self, ready: bool) {
        self.metrics.ready.set(i64::from(ready));
        self.status.send_if_modified(|s| {
            let changed = s.ready != ready;
            s.ready = ready;
            changed
        });
    }

    /// Log the exit and clear what the app left behind.
    fn app_exited(&mut self, app: &App, status: &ExitStatus) {
        // First, before the proxy's gate closes: the requests in flight count this exit
        // against their replays (query-of-death protection), and the log names them.
        let in_flight = self
            .proxy
            .as_ref()
            .map(Serving::app_exited)
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
        if self.cfg.app.kill_group_on_exit && child::stop::group_alive(app.pid) {
            // What the app forked and left in its group would hold its port and pipes.
            tracing::info!(
                event = "group_killed",
                pgid = app.pid.as_raw(),
                "killing what is left of the app's process group"
            );
            let _ = nix::sys::signal::killpg(app.pid, Signal::SIGKILL);
        }
        if let Some(guard) = &self.guard {
            guard.track(None);
        }
        self.health.app_stopped();
        self.set_ready(false);
        // Requests now wait in the proxy's hold for the next instance (or its drain).
        self.proxy_ready.send_replace(false);
        self.metrics.app_up.set(0);
        self.metrics
            .exits
            .get_or_create(&ExitLabels {
                code: status.exit_code().to_string(),
            })
            .inc();
        self.status.send_modify(|s| {
            s.app_pid = None;
            s.last_exit_code = Some(status.exit_code());
        });
    }

    fn should_restart(&self, status: &ExitStatus) -> bool {
        match self.cfg.restart.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Always => true,
        }
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
        let deadline = Instant::now() + self.cfg.logs.exit_timeout;
        let ready = async move {
            sleep(delay).await;
            let mut all = true;
            for d in delivered {
                all &= d.wait(deadline).await;
            }
            all
        };
        tokio::pin!(ready);
        loop {
            tokio::select! {
                all = &mut ready => {
                    if !all {
                        tracing::warn!(event = "logs_still_open", "a pipe of the last run is still open (held by a process outside its group?); its later records may mix with the next run's");
                    }
                    return None;
                }
                ev = self.signals.recv() => match ev {
                    SignalEvent::Stop(sig) => return Some(sig),
                    other => self.on_signal(other, None),
                },
            }
        }
    }

    fn set_phase(&self, phase: Phase, pid: Option<Pid>) {
        if phase != Phase::Running {
            self.set_ready(false);
        }
        self.metrics.set_phase(phase);
        if let Err(e) = self.notifier.status(phase.as_str()) {
            tracing::debug!(error = %e, "cannot send STATUS=");
        }
        let restarts = self.restarts;
        self.status.send_modify(|s| {
            s.phase = phase;
            s.app_pid = pid.map(Pid::as_raw);
            s.restarts = restarts;
        });
    }

    /// Start the OTLP export queues (spans, logs), when an endpoint is configured.
    fn start_telemetry(&mut self) -> Result<(), i32> {
        let Some(settings) = self.otlp.take() else {
            return Ok(());
        };
        let registry = self
            .registry
            .as_mut()
            .expect("the registry is taken by the admin port, after telemetry");
        match crate::telemetry::Telemetry::start(settings, registry) {
            Ok(t) => {
                self.telemetry = Some(t);
                Ok(())
            }
            Err(e) => {
                tracing::error!(event = "otlp_failed", error = %e, "cannot start the OTLP export");
                Err(exit::CONFIG)
            }
        }
    }

    /// Send the last spans, log records and metrics (bounded by telemetry.shutdown_timeout).
    async fn finish_telemetry(&mut self) {
        if let Some(t) = self.telemetry.take() {
            t.shutdown().await;
        }
    }

    /// Start the log pipeline (and tail mode, if configured).
    fn start_logs(&mut self) -> Result<(), i32> {
        let ctx = self
            .log_ctx
            .take()
            .unwrap_or_else(|| LogContext::from_process(self.cfg.service_name()));
        let extra: Vec<_> = self
            .telemetry
            .as_ref()
            .and_then(crate::logs::sinks::otlp::extra_sink)
            .into_iter()
            .collect();
        let started =
            Pipeline::start_with(&self.cfg.logs, ctx, extra).and_then(|p| p.tail().map(|()| p));
        match started {
            Ok(p) => {
                self.logs = Some(p);
                Ok(())
            }
            Err(e) => {
                tracing::error!(event = "logs_failed", error = %e, "cannot start the log pipeline");
                Err(match e {
                    LogsError::Config(_) => exit::CONFIG,
                    _ => exit::INTERNAL,
                })
            }
        }
    }

    /// Hand the app's pipes to the log pipeline; the readers' ends, to wait on at a restart.
    fn attach_logs(&mut self, spawned: &mut child::Spawned) -> Vec<Delivered> {
        let mut delivered = Vec::new();
        let Some(logs) = &self.logs else {
            return delivered;
        };
        let instance = AppInstance {
            pid: spawned.pid.as_raw() as u32,
            restart_count: self.restarts,
        };
        for (stream, fd) in [
            (Stream::Stdout, spawned.stdout.take()),
            (Stream::Stderr, spawned.stderr.take()),
        ] {
            if let Some(fd) = fd {
                match logs.attach(stream, fd, instance) {
                    Ok(d) => delivered.push(d),
                    Err(e) => {
                        tracing::error!(event = "logs_failed", error = %e, "cannot read the app's output; it is lost");
                    }
                }
            }
        }
        delivered
    }

    /// Read the app's pipes to EOF (a grandchild may hold them open: bounded by
    /// `logs.exit_timeout`), then flush every sink (bounded again).
    async fn finish_logs(&mut self) {
        let Some(logs) = self.logs.take() else { return };
        let timeout = self.cfg.logs.exit_timeout;
        let eof = logs.finish_readers(Instant::now() + timeout).await;
        let counters = logs.counters();
        let flushed = logs.shutdown(timeout).await;
        let c = counters.snapshot();
        tracing::info!(
            event = "logs_flushed",
            eof,
            flushed,
            lines_in = c.lines_in,
            dropped = c.sinks.iter().map(|s| s.dropped).sum::<u64>(),
            "log pipeline finished"
        );
    }

    /// Last step on every path out: publish Stopped and say goodbye.
    fn finish(&mut self, code: i32) -> i32 {
        self.set_phase(Phase::Stopped, None);
        if let Some(guard) = &self.guard {
            guard.track(None);
        }
        tracing::info!(
            event = "exit",
            exit_code = code,
            restarts = self.restarts,
            orphans_reaped = self.reaper.orphans_reaped(),
            "tandem exits"
        );
        code
    }
}

impl Status {
    /// The status before anything has happened.
    pub fn initial() -> Self {
        Self {
            phase: Phase::Starting,
            ready: false,
            app_pid: None,
            restarts: 0,
            last_exit_code: None,
            listeners: Vec::new(),
        }
    }
}

/// One event for a drain: how many requests finished and how many were cut.
fn log_drain(report: &tandem_proxy::DrainReport) {
    if report.all_finished() {
        tracing::info!(
            event = "drained",
            finished = report.finished(),
            cut = 0u64,
            "proxy drained: every in-flight request finished"
        );
    } else {
        tracing::warn!(
            event = "drained",
            finished = report.finished(),
            cut = report.cut(),
            "proxy drain deadline passed: requests were cut"
        );
    }
}

/// Stand-in status when the reaper dropped a watch (cannot happen while it runs).
const LOST: ExitStatus = ExitStatus {
    code: None,
    signal: None,
    core_dumped: false,
};

fn internal(what: &str, e: std::io::Error) -> i32 {
    tracing::error!(event = "internal_error", error = %e, "{what}");
    exit::INTERNAL
}
