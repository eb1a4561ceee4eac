//! tandem's configuration: typed, validated once, then read by everything else.
//!
//! Layers, later wins: built-in defaults < `include`d platform files < service files <
//! `TANDEM_*` environment < command-line flags (see [`layers`]). Every struct denies unknown
//! fields, so a typo is an error that names the file, line and key, never a silent default.
//! The rest of the code only sees [`Config`] after [`Config::validate`] has passed.
pub mod layers;
pub mod signal;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

pub use layers::{load, LoadError, Loaded, Overrides, Source};
pub use signal::SignalName;

/// The whole, merged configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Files merged *below* this one (platform defaults), relative to the including file.
    pub include: Vec<PathBuf>,
    /// What this service is called in tandem's events, logs and telemetry.
    pub service: ServiceConfig,
    /// The supervised app: what to run and how to stop it.
    pub app: AppConfig,
    /// Whether and how fast to restart the app when it exits.
    pub restart: RestartConfig,
    /// tandem's admin port: health, readiness, metrics, status.
    pub admin: AdminConfig,
    /// The log pipeline: capture, parsing, sinks (see `crate::logs` and docs/logs.md).
    pub logs: crate::logs::LogsConfig,
    /// The inbound proxy in front of the app's ports.
    pub proxy: ProxyConfig,
    /// Probes of the app: readiness gates traffic and READY=1, liveness restarts a hung app.
    pub health: crate::health::HealthConfig,
    /// The order of the stop sequence.
    pub shutdown: ShutdownConfig,
    /// tandem's own async runtime.
    pub runtime: RuntimeConfig,
    /// OpenTelemetry export (traces, logs, metrics over OTLP) and the app's OTLP pass-through.
    pub telemetry: crate::telemetry::TelemetryConfig,
}

/// The inbound proxy: one entry per port of the app (see proxy/README.md for every key).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Listeners, bound before the app starts. `--proxy LISTEN=UPSTREAM` flags add more.
    pub listeners: Vec<tandem_proxy::ListenerConfig>,
    /// One structured record per request into the log pipeline.
    pub access_log: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listeners: Vec::new(),
            access_log: true,
        }
    }
}

/// The stop sequence.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After a stop is requested, how long tandem keeps serving while reporting "not ready"
    /// (so load balancers and service catalogs deregister it) before draining the proxy.
    /// Nomad's `shutdown_delay`, Kubernetes' preStop sleep.
    #[serde(with = "tandem_proxy::duration")]
    pub delay: Duration,
}

/// tandem's async runtime.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Worker threads for the proxy and pipeline; 0 = the number of CPUs, at most 4.
    pub worker_threads: usize,
}

/// The admin port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics`, `/status`; `""` turns it off. Loopback
    /// by default. When this default address is taken (a second tandem on the host), tandem
    /// warns and runs without it; an address you set must bind or tandem exits 70.
    pub listen: String,
    /// File holding a bearer token the admin port requires (`Authorization: Bearer <token>`);
    /// mandatory when `listen` is not a loopback address, so metrics and status never leak.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
}

impl AdminConfig {
    /// Refuses an admin port reachable from other hosts without a token: config validation
    /// calls this, so tandem exits 64 before binding anything. Also reads the token file, so
    /// a missing or empty one is a config error too.
    pub fn check_exposure(&self) -> Result<(), String> {
        let listen = self.listen.trim();
        let Ok(addr) = listen.parse::<std::net::SocketAddr>() else {
            return Ok(()); // off, or reported by the address check
        };
        if self.token_file.is_some() {
            self.load_token()?;
        } else if !addr.ip().is_loopback() {
            return Err(format!(
                "admin.listen: {listen} is reachable from other hosts; set admin.token_file (a file holding a bearer token) or listen on 127.0.0.1"
            ));
        }
        Ok(())
    }

    /// The admin token from `admin.token_file` (trimmed), if one is configured.
    pub fn load_token(&self) -> Result<Option<std::sync::Arc<str>>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("admin.token_file {}: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < 16 {
            return Err(format!(
                "admin.token_file {}: the token must be at least 16 characters",
                path.display()
            ));
        }
        Ok(Some(std::sync::Arc::from(token)))
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_ADMIN.to_string(),
            token_file: None,
        }
    }
}

/// The admin port's default address (Envoy's admin port number, on loopback).
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

/// Identity of the service.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Service name; defaults to the file name of the app's command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `service.version` on every OTLP resource (`OTEL_RESOURCE_ATTRIBUTES` may set it too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The app tandem runs as its child.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppConfig {
    /// Program and arguments; the command line after `--` overrides it.
    pub command: Vec<String>,
    /// Working directory of the app (default: tandem's own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// Variables added to (or replacing in) the environment tandem passes through.
    pub env: BTreeMap<String, String>,
    /// User (name or numeric uid) to run the app as; tandem keeps its own privileges.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group (name or numeric gid); defaults to the user's primary group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Signal sent to the app's process group to ask it to stop.
    pub stop_signal: SignalName,
    /// How long the app has after `stop_signal` before its group is SIGKILLed.
    #[serde(with = "tandem_proxy::duration")]
    pub stop_timeout: Duration,
    /// Signals tandem receives and passes on to the app's main process.
    pub forward_signals: Vec<SignalName>,
    /// When the app's main process exits, SIGKILL what is left of its process group, so a
    /// restarted app never finds its predecessor's children holding its port or pipes.
    pub kill_group_on_exit: bool,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            command: Vec::new(),
            workdir: None,
            env: BTreeMap::new(),
            user: None,
            group: None,
            stop_signal: SignalName(Signal::SIGTERM),
            stop_timeout: Duration::from_secs(10),
            forward_signals: [
                Signal::SIGHUP,
                Signal::SIGUSR1,
                Signal::SIGUSR2,
                Signal::SIGWINCH,
            ]
            .into_iter()
            .map(SignalName)
            .collect(),
            kill_group_on_exit: true,
        }
    }
}

/// When to restart the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Exit with the app's code as soon as it exits (tini's behaviour; the default).
    Never,
    /// Restart when the app exits non-zero or is killed by a signal.
    OnFailure,
    /// Restart whenever the app exits, even with code 0.
    Always,
}

/// Restart policy, backoff and start limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    /// `never` | `on-failure` | `always`.
    pub policy: RestartPolicy,
    /// Delay before the first restart.
    #[serde(with = "tandem_proxy::duration")]
    pub initial_delay: Duration,
    /// Upper bound of the delay, however many failures came before.
    #[serde(with = "tandem_proxy::duration")]
    pub max_delay: Duration,
    /// Growth factor of the delay per consecutive failure.
    pub multiplier: f64,
    /// Random spread of each delay, as a fraction (0.2 = ±20%), so a fleet does not restart
    /// in lockstep.
    pub jitter: f64,
    /// A run at least this long counts as stable: the next delay starts again from
    /// `initial_delay`.
    #[serde(with = "tandem_proxy::duration")]
    pub reset_after: Duration,
    /// At most this many starts within `start_limit_interval` (systemd's StartLimitBurst);
    /// one more and tandem gives up with exit code 75. 0 disables the limit.
    pub start_limit_burst: u32,
    /// The window of the start limit (systemd's StartLimitIntervalSec).
    #[serde(with = "tandem_proxy::duration")]
    pub start_limit_interval: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            policy: RestartPolicy::Never,
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
            reset_after: Duration::from_secs(60),
            start_limit_burst: 5,
            start_limit_interval: Duration::from_secs(60),
        }
    }
}

impl Config {
    /// The readiness probe tandem runs when `[health.readiness]` is not set but proxy
    /// listeners are: the app is ready once every listener's upstream accepts a TCP
    /// connection, checked quickly after each spawn (not "ready at spawn", which let requests
    /// through before the app listened and spent their attempts on refusals).
    pub fn implicit_readiness(&self) -> Option<crate::health::probe::Probe> {
        if self.health.readiness.is_some() {
            return None;
        }
        crate::health::probe::Probe::implicit(
            self.proxy.listeners.iter().map(|l| l.upstream.as_str()),
        )
    }

    /// Cross-field checks that serde cannot express. Each error names the key.
    pub fn validate(&self) -> Result<(), String> {
        // Without a command tandem runs beside the app rather than above it (a Nomad sidecar
        // task): it then needs something to do, which is following the app's log files.
        if self.app.command.is_empty() && self.logs.tail.is_none() {
            return Err(
                "no command to run: give one after `--` (tandem -- ./app) or set app.command"
                    .into(),
            );
        }
        if self.app.command.first().is_some_and(|p| p.is_empty()) {
            return Err("app.command: the program name is empty".into());
        }
        self.validate_settings()
    }

    /// Every check but the presence of a command (what `tandem check` can verify alone).
    pub fn validate_settings(&self) -> Result<(), String> {
        let admin = self.admin.listen.trim();
        if !admin.is_empty() && admin.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("admin.listen: {admin:?} is not an IP:PORT address (or \"\" to turn the admin port off)"));
        }
        self.admin.check_exposure()?;
        for sig in &self.app.forward_signals {
            match sig.0 {
                Signal::SIGKILL | Signal::SIGSTOP => {
                    return Err(format!("app.forward_signals: {sig} cannot be caught, so it cannot be forwarded"))
                }
                Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => {
                    return Err(format!(
                        "app.forward_signals: {sig} starts tandem's stop sequence (see app.stop_signal); it cannot also be forwarded"
                    ))
                }
                Signal::SIGCHLD => return Err("app.forward_signals: SIGCHLD is tandem's own (it reaps zombies)".into()),
                _ => {}
            }
        }
        self.logs.validate()?;
        let mut names = std::collections::HashSet::new();
        for (i, l) in self.proxy.listeners.iter().enumerate() {
            l.validate()
                .map_err(|e| format!("proxy.listeners[{i}]: {e}"))?;
            if !names.insert(l.display_name()) {
                return Err(format!(
                    "proxy.listeners[{i}]: a second listener named {:?} (give each a distinct name)",
                    l.display_name()
                ));
            }
        }
        self.health.validate().map_err(|e| e.to_string())?;
        self.telemetry
            .passthrough
            .validate()
            .map_err(|e| e.to_string())?;
        self.telemetry.validate()?;
        let r = &self.restart;
        if !(r.multiplier >= 1.0 && r.multiplier.is_finite()) {
            return Err(format!(
                "restart.multiplier: must be a number >= 1.0, got {}",
                r.multiplier
            ));
        }
        if !(0.0..=1.0).contains(&r.jitter) {
            return Err(format!(
                "restart.jitter: must be between 0.0 and 1.0, got {}",
                r.jitter
            ));
        }
        if r.initial_delay > r.max_delay {
            return Err(format!(
                "restart.initial_delay ({}) is larger than restart.max_delay ({})",
                humantime::format_duration(r.initial_delay),
                humantime::format_duration(r.max_delay)
            ));
        }
        if r.start_limit_burst > 0 && r.start_limit_interval.is_zero() {
            return Err(
                "restart.start_limit_interval: must be > 0 when restart.start_limit_burst is set"
                    .into(),
            );
        }
        Ok(())
    }

    /// The service name: configured, or the file name of the app's program.
    pub fn service_name(&self) -> String {
        if let Some(name) = &self.service.name {
            return name.clone();
        }
        self.app
            .command
            .first()
            .and_then(|p| std::path::Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "app".into())
    }
}
