//! The wiring: building tandem's parts from the config, in the order the lifecycle needs them,
//! and taking them down at exit in the reverse order of their use.
//!
//! Two steps, both from the config's checked form ([`Checked`]: addresses, probes, patterns
//! and `OTEL_*` were checked when the config was loaded, so nothing here re-validates).
//! [`prepare`] binds nothing and spawns nothing (reaper, signal handlers, the probe monitor,
//! the app spec): a failure there exits before the lifecycle announces Starting.
//! [`Plan::start`] starts the parts, each given what it needs from the ones before it:
//! OTLP export, log pipeline, OTLP pass-through, proxy (held: not ready), admin port. The
//! order is the code's order, so no part waits in an `Option` for another: the metrics
//! registry is a local that every part registers into, then the admin port owns it. A failed
//! step returns a [`StartError`] with what was started so far, to be finished as at any exit.
use std::sync::Arc;

use nix::sys::signal::Signal;
use prometheus_client::registry::Registry;
use tandem_proxy::{
    AccessRecord, CancellationToken, DrainReport, Hooks, Inbound, OutboundServing, Serving,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{machine::Machine, start_error::StartError, Options};
use crate::{
    admin::AdminState,
    child::{guard::SharedGuard, AppSpec, Reaper},
    config::{Admin, Checked, Config},
    control,
    health::{notify::Notifier, probe::ExitWatcher, HealthMonitor},
    logs::{Injector, Level, LogContext, LogRules, Pipeline},
    metrics::{LogsCollector, SupervisorMetrics},
    passthrough::{CheckedPassthrough, Passthrough},
    phase::Status,
    signals::Signals,
    telemetry::{self, Telemetry},
};

/// Variables of tandem's environment that are tandem's alone: the app speaking on systemd's
/// notify socket would confuse the unit's state (NotifyAccess=main would also drop it).
/// The hand-over variables of `tandem upgrade` name descriptors of tandem's.
const TANDEM_ONLY_ENV: [&str; 5] = [
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    crate::upgrade::HANDOVER_ENV,
    crate::upgrade::FALLBACK_ENV,
];

/// What the lifecycle drives for the whole run: made by [`prepare`], before anything is bound.
pub struct Core {
    pub cfg: Config,
    /// The one `waitpid` caller (see `child::reap`).
    pub reaper: Reaper,
    pub signals: Signals,
    /// The guard process; None when `main` could not fork it (it warned then).
    pub guard: Option<SharedGuard>,
    pub health: HealthMonitor,
    /// Where the config came from, to reload it; None: nothing to read again.
    pub source: Option<super::reload::ConfigSource>,
    /// Actions asked by the admin port (`POST /admin/reload`).
    pub control: mpsc::Receiver<control::Request>,
    /// Where this process stands in `tandem upgrade`s, and the app to adopt after one.
    pub upgrade: super::upgrade::State,
    /// `restart.mode = "rolling"`: the loopback host and port of the current app process
    /// (the proxy's upstreams point there); None in stop-start mode.
    pub port: Option<(String, u16)>,
    /// A stop-start restart's new app section and command, in force from the next start.
    pub staged: Option<(crate::config::AppConfig, AppSpec)>,
}

/// Made before anything starts, for the machine: its metrics and where sd_notify goes.
pub struct Prepared {
    pub core: Core,
    pub plan: Plan,
    pub metrics: SupervisorMetrics,
    pub notifier: Notifier,
}

/// What [`Plan::start`] starts from.
pub struct Plan {
    /// Every part registers its metrics here; the admin port serves it (the OTLP push reads
    /// it too).
    registry: Registry,
    /// Host name, container id, systemd and Nomad identity: read once, for the OTLP resource
    /// and the log pipeline's records.
    log_ctx: LogContext,
    /// OTLP export settings, resolved (with `OTEL_*`); None: off.
    otlp: Option<telemetry::Settings>,
    /// The log pipeline's compiled patterns.
    log_rules: LogRules,
    /// The OTLP pass-through, checked; None: off.
    passthrough: Option<CheckedPassthrough>,
    /// The app's command; None: no command, tandem runs beside the app.
    spec: Option<AppSpec>,
    /// The admin port, checked.
    admin: Admin,
    /// The admin port's end of the control channel.
    control: control::Handle,
    /// Sockets a previous image handed over (`tandem upgrade`); None: a fresh start.
    handover: Option<crate::upgrade::Handover>,
}

/// The started parts.
pub struct Parts {
    /// The app's command, its environment pointed at the pass-through; None: beside the app.
    pub spec: Option<AppSpec>,
    pub logs: Pipeline,
    pub proxy: Proxy,
    /// The outbound services; None: none configured, or drained.
    pub outbound: Option<OutboundServing>,
    /// The OTLP pass-through for the app's own telemetry; None: off.
    pub(super) passthrough: Option<Passthrough>,
    /// The running OTLP export; None: no endpoint configured.
    pub(super) telemetry: Option<Telemetry>,
    /// The admin port's server; None: off.
    pub(super) admin: Option<AdminTask>,
}

/// The admin port's server: stopped (its socket returned) by `tandem upgrade`.
pub struct AdminTask {
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<tokio::net::TcpListener>,
}

/// The proxy, through its life.
pub enum Proxy {
    /// No listeners configured.
    Off,
    /// Bound and serving, gated by the machine's readiness.
    Serving(Box<Serving>),
    /// Drained: its listeners are closed.
    Drained,
}

/// A start that failed: why, and what was started before (taken down like a run's parts).
pub struct Failed {
    pub error: StartError,
    pub started: Teardown,
}

/// What is taken down at exit, in this order: the parts of a run, or those started before a
/// failed step.
pub struct Teardown {
    proxy: Proxy,
    outbound: Option<OutboundServing>,
    logs: Option<Pipeline>,
    passthrough: Option<Passthrough>,
    telemetry: Option<Telemetry>,
}

/// What the admin port has of the lifecycle: its status to read, its control to ask.
struct Lifecycle {
    status: watch::Receiver<Status>,
    control: control::Handle,
    /// The admin socket a previous image handed over (`tandem upgrade`).
    handed: Option<std::net::TcpListener>,
    /// The outbound services, for `/status`.
    outbound: Option<tandem_proxy::OutboundView>,
}

/// Exit statuses for exec probes come from the one reaper (see `child::reap`).
struct ReaperExits(Reaper);

impl ExitWatcher for ReaperExits {
    fn exited(
        &self,
        pid: u32,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<i32>> + Send>> {
        let rx = self.0.watch(nix::unistd::Pid::from_raw(pid as i32));
        Box::pin(async move { rx.await.ok().map(|s| s.exit_code()) })
    }

    fn spawn(&self, cmd: &mut std::process::Command) -> std::io::Result<std::process::Child> {
        self.0.spawn_command(cmd)
    }
}

/// Everything that binds nothing: the reaper and signal handlers (before any child exists),
/// the probe monitor, the OTLP resource completed with the host's identity.
pub fn prepare(checked: Checked, opts: Options) -> Result<Prepared, StartError> {
    let Checked {
        config: cfg,
        admin,
        logs: log_rules,
        health: checks,
        telemetry: otlp,
        passthrough,
    } = checked;
    let mut registry = Registry::default();
    let metrics = SupervisorMetrics::register(&mut registry);
    let reaper = Reaper::start(metrics.orphans_reaped.clone()).map_err(StartError::Reaper)?;
    // The guard's exit is claimed (not counted as an orphan) and, while tandem runs, a
    // killed guard is replaced.
    let guard = opts
        .guard
        .map(|g| crate::child::guard::keep_alive(g, reaper.clone()));
    let forward: Vec<Signal> = cfg.app.forward_signals.iter().map(|s| s.0).collect();
    let signals = Signals::install(&forward).map_err(StartError::Signals)?;
    // Handlers are in place: signals sent to the previous image during its exec (pending
    // here, blocked) and those it received but did not act on come in now, on this thread.
    let mut handover = opts.handover;
    if let Some(h) = &handover {
        let pending: Vec<Signal> = h
            .signals
            .iter()
            .filter_map(|s| Signal::try_from(*s).ok())
            .collect();
        signals.requeue(&pending);
    }
    crate::signals::unblock_in_this_thread();
    let upgrade = super::upgrade::State::new(opts.started_from, handover.as_mut());
    // Checked when the config was loaded: an Err here cannot happen.
    let mut port = cfg.rolling_port().ok().flatten();
    let mut checks = checks;
    // After `tandem upgrade`: the adopted app listens where a rolling restart put it.
    if let (Some((_, p)), Some(handed)) =
        (port.as_mut(), handover.as_ref().and_then(|h| h.app_port))
    {
        checks.readiness = checks.readiness.map(|r| r.retarget(*p, handed));
        checks.liveness = checks.liveness.map(|r| r.retarget(*p, handed));
        *p = handed;
    }
    if cfg.health.readiness.is_none() {
        if let Some(p) = &checks.readiness {
            tracing::debug!(event = "implicit_readiness", probe = %p, "no readiness probe configured: the app is ready once its upstream accepts connections");
        }
    }
    let health = HealthMonitor::new(checks, Arc::new(ReaperExits(reaper.clone())));
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(event = "notify_unavailable", error = %e, "sd_notify disabled");
        Notifier::disabled()
    });
    let log_ctx = LogContext::from_process(cfg.service_name());
    // The host's detected attributes go below what the config and `OTEL_*` said.
    let otlp = otlp.map(|mut settings| {
        let mut resource = crate::otlp::resource::of_process(&log_ctx.service, &log_ctx.resource);
        resource.append(&mut settings.resource);
        settings.resource = resource;
        settings
    });
    let spec = app_spec(&cfg, port.as_ref().map(|(_, p)| *p));
    let (control, control_rx) = control::channel();
    Ok(Prepared {
        core: Core {
            cfg,
            reaper,
            signals,
            guard,
            health,
            source: opts.config_source,
            control: control_rx,
            upgrade,
            port,
            staged: None,
        },
        plan: Plan {
            registry,
            log_ctx,
            otlp,
            log_rules,
            passthrough,
            spec,
            admin,
            control,
            handover,
        },
        metrics,
        notifier,
    })
}

/// The app's command from `cfg.app` (None: no command); in rolling mode, its process's `port`
/// in `restart.port_env` and for `{port}` in the command.
pub(super) fn app_spec(cfg: &Config, port: Option<u16>) -> Option<AppSpec> {
    let mut spec = cfg
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
        })?;
    if let Some(port) = port {
        super::rolling::give_port(&mut spec, &cfg.restart.port_env, port);
    }
    // Each outbound service's address, unless the app's env names it already.
    for o in &cfg.outbound {
        spec.env
            .entry(outbound_env(&o.name))
            .or_insert_with(|| o.listen.clone());
    }
    if let Some(f) = &cfg.outbound_proxy {
        spec.env
            .entry("TANDEM_OUTBOUND_PROXY".to_string())
            .or_insert_with(|| format!("http://{}", f.listen));
    }
    Some(spec)
}

/// `TANDEM_OUTBOUND_<NAME>`: the variable that gives the app an outbound service's address.
pub fn outbound_env(name: &str) -> String {
    format!(
        "TANDEM_OUTBOUND_{}",
        name.to_ascii_uppercase().replace('-', "_")
    )
}

// === impl Parts ===

impl Parts {
    /// The app's command from `cfg` (a restart that applies a changed config), pointed at the
    /// running OTLP pass-through as the first one was; `port` as in [`app_spec`].
    pub fn respec(&self, cfg: &Config, port: Option<u16>) -> Option<AppSpec> {
        let mut spec = app_spec(cfg, port)?;
        if let Some(p) = &self.passthrough {
            p.app_env(&mut spec.env, &mut spec.env_remove);
        }
        Some(spec)
    }
}

// === impl Plan ===

impl Plan {
    /// Start every part, in order (see the module's doc).
    pub async fn start(self, cfg: &Config, machine: &Machine) -> Result<Parts, Box<Failed>> {
        let Plan {
            mut registry,
            log_ctx,
            otlp,
            log_rules,
            passthrough,
            mut spec,
            admin,
            control,
            mut handover,
        } = self;
        let mut started = Teardown {
            proxy: Proxy::Off,
            outbound: None,
            logs: None,
            passthrough: None,
            telemetry: None,
        };
        let fail = |error, started| Err(Box::new(Failed { error, started }));
        // OTLP export before its users: the log pipeline's sink and the proxy's tracer.
        let mut telemetry = match start_telemetry(otlp, &mut registry) {
            Ok(t) => t,
            Err(e) => return fail(e, started),
        };
        // The log pipeline next, so the first line (and the first access record) already has
        // a reader.
        let tail = handover.as_mut().and_then(|h| h.tail.take());
        let logs = match start_logs(cfg, &log_rules, log_ctx, telemetry.as_ref(), tail) {
            Ok(l) => l,
            Err(e) => {
                started.telemetry = telemetry;
                return fail(e, started);
            }
        };
        // Before the app starts: its SDK exports to the pass-through from its first span.
        let passthrough = match start_passthrough(
            cfg,
            passthrough.as_ref(),
            &mut registry,
            spec.as_mut(),
            handover.as_mut(),
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                started.telemetry = telemetry;
                started.logs = Some(logs);
                return fail(e, started);
            }
        };
        // Listeners are bound before the app starts, while not ready: a client's connection
        // waits in the proxy's hold, an orchestrator's probe gets a 503, none is refused.
        let rest = async {
            let (proxy, access) = start_proxy(
                cfg,
                &mut registry,
                telemetry.as_ref(),
                &logs,
                machine,
                handover.as_mut(),
            )
            .await?;
            // The outbound services serve before the app starts: it may call out at once.
            let outbound =
                start_outbound(cfg, &mut registry, telemetry.as_ref(), handover.as_mut()).await?;
            let admin = start_admin(
                cfg,
                &admin,
                registry,
                &logs,
                access,
                telemetry.as_mut(),
                Lifecycle {
                    status: machine.status(),
                    control,
                    outbound: outbound.as_ref().map(OutboundServing::view),
                    handed: handover
                        .as_mut()
                        .zip(admin.listen)
                        .and_then(|(h, listen)| h.take_listener("admin", listen)),
                },
            )
            .await?;
            Ok((proxy, outbound, admin))
        };
        let rest = rest.await;
        if let Some(h) = &mut handover {
            h.close_unclaimed();
        }
        match rest {
            Ok((proxy, outbound, admin)) => Ok(Parts {
                spec,
                logs,
                proxy,
                outbound,
                passthrough,
                telemetry,
                admin,
            }),
            Err(error) => fail(
                error,
                Teardown {
                    proxy: Proxy::Off,
                    outbound: None,
                    logs: Some(logs),
                    passthrough,
                    telemetry,
                },
            ),
        }
    }
}

/// Start the OTLP export queues (spans, logs), when an endpoint is configured.
fn start_telemetry(
    otlp: Option<telemetry::Settings>,
    registry: &mut Registry,
) -> Result<Option<Telemetry>, StartError> {
    let Some(settings) = otlp else {
        return Ok(None);
    };
    Telemetry::start(settings, registry)
        .map(Some)
        .map_err(StartError::Telemetry)
}

/// Start the log pipeline (and tail mode, if configured).
fn start_logs(
    cfg: &Config,
    rules: &LogRules,
    ctx: LogContext,
    telemetry: Option<&Telemetry>,
    tail: Option<crate::logs::tail::Checkpoint>,
) -> Result<Pipeline, StartError> {
    let extra: Vec<_> = telemetry
        .and_then(crate::logs::sinks::otlp::extra_sink)
        .into_iter()
        .collect();
    Pipeline::start_with(&cfg.logs, rules, ctx, extra)
        .and_then(|p| p.tail_from(tail).map(|()| p))
        .map_err(StartError::Logs)
}

/// Bind the OTLP pass-through and point the app's environment at it.
async fn start_passthrough(
    cfg: &Config,
    checked: Option<&CheckedPassthrough>,
    registry: &mut Registry,
    spec: Option<&mut AppSpec>,
    mut handover: Option<&mut crate::upgrade::Handover>,
) -> Result<Option<Passthrough>, StartError> {
    let Some(checked) = checked else {
        return Ok(None);
    };
    let ctx = LogContext::from_process(cfg.service_name());
    let resource = crate::otlp::resource::of_process(&ctx.service, &ctx.resource);
    let mut inherited = |key: &'static str, addr| {
        handover
            .as_deref_mut()?
            .take_listener(&format!("passthrough:{key}"), addr)
    };
    let p = Passthrough::start(
        &cfg.telemetry.passthrough,
        checked,
        &resource,
        registry,
        &mut inherited,
    )
    .await
    .map_err(StartError::Passthrough)?;
    if let Some(spec) = spec {
        p.app_env(&mut spec.env, &mut spec.env_remove);
    }
    Ok(Some(p))
}

/// Bind the proxy's listeners and serve them, gated by the machine's proxy gate (closed for
/// now); with `proxy.access_log`, also the access log's way into the pipeline.
async fn start_proxy(
    cfg: &Config,
    registry: &mut Registry,
    telemetry: Option<&Telemetry>,
    logs: &Pipeline,
    machine: &Machine,
    mut handover: Option<&mut crate::upgrade::Handover>,
) -> Result<(Proxy, Option<Injector>), StartError> {
    if cfg.proxy.listeners.is_empty() {
        return Ok((Proxy::Off, None));
    }
    // After `tandem upgrade` in rolling mode: the upstreams point where the app listens now.
    let listeners = match handover.as_deref().and_then(|h| h.app_port) {
        Some(port) if cfg.rolling_port().is_ok_and(|p| p.is_some()) => {
            super::rolling::listeners_at(&cfg.proxy.listeners, port)
        }
        _ => cfg.proxy.listeners.clone(),
    };
    // A socket handed over by the previous image serves on when its listener still listens
    // on the same address.
    let mut inherited = |c: &tandem_proxy::ListenerConfig| {
        handover
            .as_deref_mut()?
            .take_listener(&format!("proxy:{}", c.display_name()), c.listen)
    };
    let bound = match Inbound::bind_inherited(&listeners, &mut inherited).await {
        Ok(b) => b,
        // A missing or bad certificate, key, CA, JWKS or secrets file is config.
        Err(e @ tandem_proxy::ProxyError::File(_)) => return Err(StartError::ProxyFile(e)),
        Err(e) => return Err(StartError::ProxyBind(e)),
    };
    crate::memory::spawn_trimmer();
    let mut listeners = Vec::new();
    for (name, addr) in bound.local_addrs() {
        tracing::info!(event = "proxy_listening", listener = %name, addr = %addr, "proxy listening");
        listeners.push((name, addr.to_string()));
    }
    machine.set_listeners(listeners);
    let mut hooks = Hooks::new().with_metrics(registry);
    if let Some(tracer) = telemetry.and_then(|t| t.tracer()) {
        hooks = hooks.with_tracer(tracer);
    }
    let mut access = None;
    if cfg.proxy.access_log {
        let injector = logs.injector();
        access = Some(injector.clone());
        hooks = hooks.with_access_log(access_log(injector));
    }
    let serving = tandem_proxy::serve(bound, machine.proxy_gate(), CancellationToken::new(), hooks);
    Ok((Proxy::Serving(Box::new(serving)), access))
}

/// Bind the outbound services' listeners and serve them (they need no readiness: the app
/// calls out whenever it likes).
async fn start_outbound(
    cfg: &Config,
    registry: &mut Registry,
    telemetry: Option<&Telemetry>,
    mut handover: Option<&mut crate::upgrade::Handover>,
) -> Result<Option<OutboundServing>, StartError> {
    if cfg.outbound.is_empty() {
        return Ok(None);
    }
    let mut inherited = |name: &str, listen: std::net::SocketAddr| {
        handover
            .as_deref_mut()?
            .take_listener(&format!("outbound:{name}"), listen)
    };
    let bound = tandem_proxy::Outbound::bind_inherited(
        &cfg.outbound,
        cfg.outbound_proxy.as_ref(),
        &mut inherited,
    )
    .await
    .map_err(StartError::ProxyBind)?;
    let tracer = telemetry.and_then(|t| t.tracer());
    Ok(Some(tandem_proxy::serve_outbound(
        bound,
        Some(registry),
        tracer,
    )))
}

/// One event for the outbound drain.
pub fn log_outbound_drain(d: tandem_proxy::OutboundDrain) {
    if d.finished {
        tracing::info!(
            event = "outbound_drained",
            open = d.open,
            "outbound services drained: every call finished"
        );
    } else {
        tracing::warn!(
            event = "outbound_drained",
            open = d.open,
            "outbound drain deadline passed: connections were cut"
        );
    }
}

/// The access log: one record per request into the log pipeline, `kind: access`, at warn for
/// a 5xx or a request tandem cut.
fn access_log(injector: Injector) -> impl Fn(&AccessRecord) + Send + Sync + 'static {
    move |r| {
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
    }
}

/// Register the last metrics, start the OTLP metrics push over the finished registry, then
/// bind the admin port and serve it for the rest of tandem's life.
async fn start_admin(
    cfg: &Config,
    admin: &Admin,
    mut registry: Registry,
    logs: &Pipeline,
    access: Option<Injector>,
    telemetry: Option<&mut Telemetry>,
    lifecycle: Lifecycle,
) -> Result<Option<AdminTask>, StartError> {
    let Lifecycle {
        status,
        control,
        handed,
        outbound,
    } = lifecycle;
    registry.register_collector(Box::new(LogsCollector {
        counters: logs.counters(),
        injected_dropped: access,
    }));
    let registry = Arc::new(registry);
    if let Some(t) = telemetry {
        // Every family is registered by now: the OTLP push reads the same registry.
        t.start_metrics(registry.clone())
            .map_err(StartError::MetricsPush)?;
    }
    let Some(listen) = admin.listen else {
        return Ok(None);
    };
    let handed = handed.and_then(|l| tokio::net::TcpListener::from_std(l).ok());
    let bound = match handed {
        Some(l) => Ok(l),
        None => tokio::net::TcpListener::bind(listen).await,
    };
    let listener = match bound {
        Ok(l) => l,
        Err(e) if !admin.explicit => {
            // The default address is a convenience: a second tandem on the host must still
            // run its app.
            tracing::warn!(event = "admin_unavailable", listen = %listen, error = %e, "admin port not bound (set admin.listen to choose another)");
            return Ok(None);
        }
        Err(source) => {
            return Err(StartError::AdminBind {
                listen: listen.to_string(),
                source,
            })
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
        service: cfg.service_name(),
        status,
        stats: crate::listener_stats::ListenerStats::new(registry.clone()),
        registry,
        started: std::time::Instant::now(),
        recent: Some(logs.recent()),
        control: Some(control),
        outbound,
    });
    // Off loopback the admin port requires a bearer token (read when the config was checked).
    let stop = CancellationToken::new();
    let task = tokio::spawn(crate::admin::serve_until(
        listener,
        state,
        admin.token.clone(),
        stop.clone(),
    ));
    Ok(Some(AdminTask { stop, task }))
}

// === impl Parts ===

impl From<Parts> for Teardown {
    fn from(parts: Parts) -> Self {
        Teardown {
            proxy: parts.proxy,
            outbound: parts.outbound,
            logs: Some(parts.logs),
            passthrough: parts.passthrough,
            telemetry: parts.telemetry,
        }
    }
}

// === impl Proxy ===

impl Proxy {
    /// The proxy while it serves.
    pub fn serving(&self) -> Option<&Serving> {
        match self {
            Proxy::Serving(s) => Some(&**s),
            Proxy::Off | Proxy::Drained => None,
        }
    }

    /// The proxy while it serves, to reconfigure.
    pub fn serving_mut(&mut self) -> Option<&mut Serving> {
        match self {
            Proxy::Serving(s) => Some(&mut **s),
            Proxy::Off | Proxy::Drained => None,
        }
    }

    /// The serving proxy, to drain: from now on it counts as drained. None when off or
    /// drained already.
    pub fn take_serving(&mut self) -> Option<Serving> {
        match std::mem::replace(self, Proxy::Drained) {
            Proxy::Serving(s) => Some(*s),
            Proxy::Off => {
                *self = Proxy::Off;
                None
            }
            Proxy::Drained => None,
        }
    }

    /// Drain it (once): None when off or drained already.
    pub async fn drain(&mut self) -> Option<DrainReport> {
        Some(self.take_serving()?.drain().await)
    }
}

// === impl Teardown ===

impl Teardown {
    /// Every way out passes here, in this order: no more traffic (a proxy not drained yet,
    /// because the app exited for good, is drained now, so held requests get their answer
    /// instead of a reset), then every line the app wrote is read to EOF and flushed, what the
    /// app sent last forwarded by the pass-through, and last the spans, records and metrics
    /// sent (each step bounded).
    pub async fn finish(mut self, cfg: &Config) {
        if let Some(report) = self.proxy.drain().await {
            log_drain(&report);
        }
        // The app has exited: its calls out are done or never come.
        if let Some(o) = self.outbound {
            log_outbound_drain(o.drain().await);
        }
        if let Some(logs) = self.logs {
            finish_logs(logs, cfg).await;
        }
        if let Some(p) = self.passthrough {
            p.shutdown().await;
        }
        // Last: the spans of the drained requests and the records of the flushed logs are now
        // all in the export queues (bounded by telemetry.shutdown_timeout).
        if let Some(t) = self.telemetry {
            t.shutdown().await;
        }
    }
}

/// Read the app's pipes to EOF (a grandchild may hold them open: bounded by
/// `logs.exit_timeout`), then flush every sink (bounded again).
async fn finish_logs(logs: Pipeline, cfg: &Config) {
    let timeout = cfg.logs.exit_timeout;
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

/// One event for a drain: how many requests finished and how many were cut.
pub fn log_drain(report: &DrainReport) {
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
