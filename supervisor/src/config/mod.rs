//! tandem's configuration: typed, validated once, then read by everything else.
//!
//! Layers, later wins: built-in defaults < `include`d platform files < service files <
//! `TANDEM_*` environment < command-line flags (see [`layers`]). Every struct denies unknown
//! fields, so a typo is an error that names the file, line and key, never a silent default.
//! [`load`] checks the merged config once into its [`Checked`] form (see [`checked`]); the
//! rest of the code only sees that, and every error is one [`ConfigError`].
pub mod checked;
pub mod error;
pub mod layers;
pub mod signal;

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

pub use checked::{Admin, Checked};
pub use error::ConfigError;
pub use layers::{load, Loaded, Origins, Overrides, Source};
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
    /// The services the app calls, each through a local listener (`[[outbound]]`; see
    /// docs/outbound.md for every key).
    pub outbound: Vec<tandem_proxy::OutboundConfig>,
    /// A forward-proxy listener for apps that honour `HTTP_PROXY`: the host of each request
    /// names the `[[outbound]]` service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound_proxy: Option<tandem_proxy::ForwardProxyConfig>,
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
    /// Worker threads of the async runtime; 0 = the number of CPUs (at most 4) when the
    /// config has proxy listeners or outbound services at start, else 1.
    pub worker_threads: usize,
}

/// The admin port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz`, `/metrics`, `/status`; `""` turns it off. Loopback
    /// by default. When this default address is taken (a second tandem on the host), tandem
    /// warns and runs without it; an address you set must bind or tandem exits 70. Parsed
    /// into [`Admin`] when the config is loaded.
    pub listen: String,
    /// File holding a bearer token the admin port requires (`Authorization: Bearer <token>`);
    /// mandatory when `listen` is not a loopback address, so metrics and status never leak.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<std::path::PathBuf>,
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

/// How `tandem restart` (and `POST /admin/restart`) replaces the app.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Stop the app, then start it again; the proxy holds requests meanwhile.
    #[default]
    StopStart,
    /// Start a second app process on a fresh port, wait for its readiness, point the proxy at
    /// it, let the old one finish its requests, then stop it (see `lifecycle::rolling`).
    Rolling,
}

/// Restart policy, backoff and start limit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestartConfig {
    /// `never` | `on-failure` | `always`.
    pub policy: RestartPolicy,
    /// How an asked restart replaces the app: `stop-start` | `rolling`.
    pub mode: RestartMode,
    /// Rolling mode: the environment variable that gives each app process its port (also
    /// substituted for `{port}` in `app.command`).
    pub port_env: String,
    /// Rolling mode: how long the new app process has to pass its readiness check; past it,
    /// it is stopped and the old one keeps serving.
    #[serde(with = "tandem_proxy::duration")]
    pub ready_timeout: Duration,
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
            mode: RestartMode::StopStart,
            port_env: "PORT".to_string(),
            ready_timeout: Duration::from_secs(60),
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

    /// Rolling mode: the loopback port every proxy listener's upstream points at (the first
    /// app process's port) and its host. None in stop-start mode. Err (naming the key) when
    /// rolling mode is set but the upstreams are not one loopback port, or there are none.
    pub fn rolling_port(&self) -> Result<Option<(String, u16)>, ConfigError> {
        if self.restart.mode != RestartMode::Rolling {
            return Ok(None);
        }
        let bad = |message: String| Err(ConfigError::key("restart.mode", message));
        let mut found: Option<(String, u16)> = None;
        for l in &self.proxy.listeners {
            let Ok(authority) = l.upstream.parse::<http::uri::Authority>() else {
                return bad(format!(
                    "\"rolling\" needs each listener's upstream as host:port; listener {} has {:?}",
                    l.display_name(),
                    l.upstream
                ));
            };
            let host = authority.host().to_string();
            let loopback = host == "localhost"
                || host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            let (true, Some(port)) = (loopback, authority.port_u16()) else {
                return bad(format!(
                    "\"rolling\" needs every listener's upstream on a loopback address with a port (tandem moves the app to a fresh local port); listener {} has {:?}",
                    l.display_name(),
                    l.upstream
                ));
            };
            match &found {
                Some((_, p)) if *p != port => {
                    return bad(format!(
                        "\"rolling\" needs every listener's upstream on the one port of the app; listener {} has {:?}, another port {p}",
                        l.display_name(),
                        l.upstream
                    ))
                }
                Some(_) => {}
                None => found = Some((host, port)),
            }
        }
        match found {
            Some(f) => Ok(Some(f)),
            None => bad(
                "\"rolling\" needs a proxy listener in front of the app (tandem points it at each new app process)"
                    .to_string(),
            ),
        }
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
