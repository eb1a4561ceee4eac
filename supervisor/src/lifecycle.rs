//! The lifecycle: the one state machine that decides the order of everything tandem does.
//!
//! ```text
//! Starting ─▶ [bind listeners, not ready] ─▶ [start log pipeline] ─▶ spawn app ─▶ Running
//! Running ── app exits ─▶ policy says restart? ─▶ Restarting (backoff) ─▶ spawn app ─▶ ...
//!    │                      └─ no ─▶ Stopped: exit with the app's code
//!    └─ SIGTERM/INT/QUIT ─▶ Stopping ─▶ [drain proxy] ─▶ stop_signal to the app's group
//!         ─▶ stop_timeout ─▶ SIGKILL ─▶ [read pipes to EOF, flush logs] ─▶ exit(code)
//! ```
//! Steps in brackets belong to other modules; this file only calls them, in this order.
//! Invariant: [`run`] is driven by `block_on` on the main thread, because the app's
//! parent-death signal is tied to the thread that spawned it (see `child::spawn`).
//! The current [`Status`] is published on a `watch` channel: `/status`, sd_notify and tests
//! observe the phases from there, never by timing.
use std::{sync::Arc, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use prometheus_client::registry::Registry;
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use tokio::{
    sync::{oneshot, watch},
    time::{sleep, Instant},
};

use crate::{
    admin::AdminState,
    child::{self, AppSpec, ExitStatus, Guard, Reaper, StdioMode},
    config::{Config, RestartPolicy},
    exit,
    logs::{AppInstance, LogContext, LogsError, Pipeline, Stream},
    metrics::{ExitLabels, SupervisorMetrics},
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
    /// Whether the app takes traffic: running and (once probes exist) passing readiness.
    pub ready: bool,
    /// The app's pid while it runs.
    pub app_pid: Option<i32>,
    /// How many times the app was restarted.
    pub restarts: u32,
    /// The exit code of the app's last run (128+N for signal N).
    pub last_exit_code: Option<i32>,
}

/// The running app.
struct App {
    pid: Pid,
    exit: oneshot::Receiver<ExitStatus>,
    started: Instant,
}

/// Why the wait on a running app ended.
enum Outcome {
    Exited(ExitStatus),
    StopRequested(Signal),
}

/// What the lifecycle is given besides the config.
pub struct Options {
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
    // Every way out passes here: what the app wrote is read to EOF and flushed (bounded).
    sup.finish_logs().await;
    sup.finish(code)
}

struct Supervisor {
    cfg: Config,
    spec: AppSpec,
    reaper: Reaper,
    signals: Signals,
    guard: Option<Guard>,
    status: watch::Sender<Status>,
    metrics: SupervisorMetrics,
    registry: Option<Registry>,
    opts: Options,
    backoff: Backoff,
    limit: StartLimit,
    rng: StdRng,
    restarts: u32,
    /// The log pipeline; None until started (and after it was finished at exit).
    logs: Option<Pipeline>,
}

// === impl Supervisor ===

impl Supervisor {
    fn new(cfg: Config, opts: Options) -> Result<Self, i32> {
        let mut registry = Registry::default();
        let metrics = SupervisorMetrics::register(&mut registry);
        let reaper = Reaper::start(metrics.orphans_reaped.clone())
            .map_err(|e| internal("cannot watch SIGCHLD", e))?;
        let forward: Vec<Signal> = cfg.app.forward_signals.iter().map(|s| s.0).collect();
        let signals = Signals::install(&forward)
            .map_err(|e| internal("cannot install signal handlers", e))?;
        let guard = match Guard::spawn() {
            Ok(g) => {
                // Claim the guard's exit status so it is not counted as an orphan.
                drop(reaper.watch(g.pid()));
                Some(g)
            }
            Err(e) => {
                tracing::warn!(event = "guard_failed", error = %e, "cannot start the guard process; if tandem is SIGKILLed the app's children may outlive it");
                None
            }
        };
        let (program, args) = cfg
            .app
            .command
            .split_first()
            .expect("validated: command is not empty");
        let spec = AppSpec {
            program: program.clone(),
            args: args.to_vec(),
            workdir: cfg.app.workdir.clone(),
            env: cfg.app.env.clone(),
            user: cfg.app.user.clone(),
            group: cfg.app.group.clone(),
        };
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
            opts,
            rng: StdRng::from_entropy(),
            restarts: 0,
            logs: None,
        })
    }

    /// The state machine, top to bottom. Returns the exit code.
    async fn run(&mut self) -> i32 {
        self.set_phase(Phase::Starting, None);
        // Listeners are bound before the app starts, while not ready: a probe from the
        // orchestrator gets a 503, not a refused connection.
        if let Err(code) = self.start_admin().await {
            return code;
        }
        // [proxy issue] Bind the proxy's listeners here too.
        // The log pipeline starts before the app, so its first line already has a reader.
        if let Err(code) = self.start_logs() {
            return code;
        }
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
            let mut app = match self.start_app() {
                Ok(app) => app,
                Err(code) => return code,
            };

            let status = match self.wait_running(&mut app).await {
                Outcome::StopRequested(sig) => return self.stop(app, sig).await.exit_code(),
                Outcome::Exited(status) => status,
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
            if let Some(sig) = self.backoff_wait(delay).await {
                tracing::info!(event = "stopping", signal = %sig, "stop requested while waiting to restart");
                self.set_phase(Phase::Stopping, None);
                return status.exit_code();
            }
            self.restarts += 1;
            self.metrics.restarts.inc();
        }
    }

    /// Bind the admin port and serve it for the rest of tandem's life.
    async fn start_admin(&mut self) -> Result<(), i32> {
        let Some(registry) = self.registry.take() else {
            return Ok(());
        };
        let listen = self.cfg.admin.listen.trim();
        if listen.is_empty() {
            return Ok(());
        }
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) if !self.opts.admin_explicit => {
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
            registry: Arc::new(registry),
            started: std::time::Instant::now(),
        });
        tokio::spawn(crate::admin::serve(listener, state));
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

    fn start_app(&mut self) -> Result<App, i32> {
        // The app's stdout/stderr are pipes that the log pipeline reads.
        let stdio = if self.logs.is_some() {
            StdioMode::Pipe
        } else {
            StdioMode::Inherit
        };
        let spawned = {
            // std reaps a child whose exec failed itself: keep the reaper's waitpid(-1) off it.
            let _hold = self.reaper.hold_for_spawn();
            child::spawn(&self.spec, stdio)
        };
        let mut spawned = match spawned {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(event = "spawn_failed", error = %e, exit_code = e.exit_code(), "cannot start the app");
                return Err(e.exit_code());
            }
        };
        let exit = self.reaper.watch(spawned.pid);
        self.attach_logs(&mut spawned);
        if let Some(guard) = &mut self.guard {
            guard.track(Some(spawned.pid));
        }
        tracing::info!(event = "started", pid = spawned.pid.as_raw(), restarts = self.restarts, command = %self.cfg.app.command.join(" "), "app started");
        self.metrics.starts.inc();
        self.metrics.app_up.set(1);
        self.set_phase(Phase::Running, Some(spawned.pid));
        // [health issue] With a readiness probe, ready waits for it to pass.
        self.set_ready(true);
        Ok(App {
            pid: spawned.pid,
            exit,
            started: Instant::now(),
        })
    }

    /// Run until the app exits or a stop is requested; forward signals meanwhile.
    async fn wait_running(&mut self, app: &mut App) -> Outcome {
        loop {
            tokio::select! {
                status = &mut app.exit => return Outcome::Exited(status.unwrap_or(LOST)),
                ev = self.signals.recv() => match ev {
                    SignalEvent::Stop(sig) => return Outcome::StopRequested(sig),
                    SignalEvent::Forward(sig) => self.forward(app.pid, sig),
                },
            }
        }
    }

    /// The stop sequence. `received` is the signal that asked for it.
    async fn stop(&mut self, mut app: App, received: Signal) -> ExitStatus {
        self.set_phase(Phase::Stopping, Some(app.pid));
        tracing::info!(event = "stopping", signal = %received, "stop requested");
        // [proxy issue] shutdown_delay, then drain the proxy here: no new requests reach the
        // app, in-flight ones finish, before the app is asked to stop.
        let stop_signal = self.cfg.app.stop_signal.0;
        let began = Instant::now();
        if let Err(e) = child::stop::signal_group(app.pid, stop_signal) {
            tracing::warn!(event = "signal_failed", signal = %stop_signal, error = %e, "cannot signal the app");
        }
        tracing::info!(event = "stop_signal_sent", signal = %stop_signal, pid = app.pid.as_raw(), timeout_ms = self.cfg.app.stop_timeout.as_millis() as u64, "asked the app to stop");
        let deadline = sleep(self.cfg.app.stop_timeout);
        tokio::pin!(deadline);
        let status = loop {
            tokio::select! {
                status = &mut app.exit => break status.unwrap_or(LOST),
                () = &mut deadline => {
                    self.kill(&app, "stop_timeout", began);
                    break (&mut app.exit).await.unwrap_or(LOST);
                }
                ev = self.signals.recv() => match ev {
                    SignalEvent::Stop(_) => {
                        self.kill(&app, "second_stop_signal", began);
                        break (&mut app.exit).await.unwrap_or(LOST);
                    }
                    SignalEvent::Forward(sig) => self.forward(app.pid, sig),
                },
            }
        };
        self.app_exited(&app, &status);
        // The app's pipes are read to EOF and the sinks flushed in `finish_logs`, on every
        // way out (not only this one).
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
            "app did not stop in time; sent SIGKILL to its process group"
        );
    }

    fn forward(&self, pid: Pid, sig: Signal) {
        if sig == Signal::SIGHUP {
            // logrotate's postrotate HUP: tandem's own log files are reopened too.
            if let Some(logs) = &self.logs {
                logs.reopen();
            }
        }
        tracing::info!(event = "signal_forwarded", signal = %sig, pid = pid.as_raw(), "forwarding signal to the app");
        if let Err(e) = child::stop::signal_process(pid, sig) {
            tracing::warn!(event = "signal_failed", signal = %sig, error = %e, "cannot forward signal");
        }
    }

    /// Log the exit and clear what the app left behind.
    fn app_exited(&mut self, app: &App, status: &ExitStatus) {
        tracing::info!(
            event = "exited",
            pid = app.pid.as_raw(),
            exit_code = status.exit_code(),
            code = status.code,
            signal = status.signal,
            core_dumped = status.core_dumped,
            ran_ms = app.started.elapsed().as_millis() as u64,
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
        if let Some(guard) = &mut self.guard {
            guard.track(None);
        }
        self.set_ready(false);
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

    /// Sleep `delay`, unless a stop signal comes first (then return it).
    async fn backoff_wait(&mut self, delay: Duration) -> Option<Signal> {
        let timer = sleep(delay);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                () = &mut timer => return None,
                ev = self.signals.recv() => match ev {
                    SignalEvent::Stop(sig) => return Some(sig),
                    SignalEvent::Forward(sig) => tracing::debug!(signal = %sig, "no app running; signal not forwarded"),
                },
            }
        }
    }

    fn set_phase(&self, phase: Phase, pid: Option<Pid>) {
        if phase != Phase::Running {
            self.set_ready(false);
        }
        self.metrics.set_phase(phase);
        let restarts = self.restarts;
        self.status.send_modify(|s| {
            s.phase = phase;
            s.app_pid = pid.map(Pid::as_raw);
            s.restarts = restarts;
        });
    }

    /// Start the log pipeline (and tail mode, if configured).
    fn start_logs(&mut self) -> Result<(), i32> {
        let ctx = LogContext::from_process(self.cfg.service_name());
        let started = Pipeline::start(&self.cfg.logs, ctx).and_then(|p| p.tail().map(|()| p));
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

    /// Hand the app's pipes to the log pipeline.
    fn attach_logs(&mut self, spawned: &mut child::Spawned) {
        let Some(logs) = &self.logs else { return };
        let instance = AppInstance {
            pid: spawned.pid.as_raw() as u32,
            restart_count: self.restarts,
        };
        for (stream, fd) in [
            (Stream::Stdout, spawned.stdout.take()),
            (Stream::Stderr, spawned.stderr.take()),
        ] {
            if let Some(fd) = fd {
                if let Err(e) = logs.attach(stream, fd, instance) {
                    tracing::error!(event = "logs_failed", error = %e, "cannot read the app's output; it is lost");
                }
            }
        }
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
        if let Some(guard) = &mut self.guard {
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
        }
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
