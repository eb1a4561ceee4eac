//! Where the lifecycle is: the [`Phase`] and the [`Status`] it publishes on a `watch`.
//!
//! A leaf: it imports nothing of tandem's, so the admin port, the metrics and the lifecycle
//! can all name a phase without importing each other. Only the lifecycle writes a status.
use serde::Serialize;

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
    /// Every phase, in the order a run passes through them.
    pub const ALL: [Phase; 5] = [
        Phase::Starting,
        Phase::Running,
        Phase::Restarting,
        Phase::Stopping,
        Phase::Stopped,
    ];

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
    /// When the app (this pid) was started, while it runs (its uptime on `/status`).
    #[serde(skip)]
    pub app_since: Option<std::time::Instant>,
    /// How many times the app was restarted.
    pub restarts: u32,
    /// The exit code of the app's last run (128+N for signal N).
    pub last_exit_code: Option<i32>,
    /// The proxy's listeners: name and bound address.
    pub listeners: Vec<(String, String)>,
    /// The last config reload's result; None: none since start.
    pub reload: Option<ReloadOutcome>,
    /// The last `tandem upgrade`'s result; None: this process has not been upgraded.
    pub upgrade: Option<UpgradeOutcome>,
}

/// What the last `tandem upgrade` did, as the image that runs after it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpgradeOutcome {
    /// When this image took over, RFC 3339 (UTC, seconds).
    pub at: String,
    /// How many execs this tandem has been through.
    pub generation: u32,
    /// Whether the new binary runs now; false: the old one took over again (see `error`).
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The version of the image before.
    pub from_version: String,
    /// This image's version.
    pub version: String,
    /// The binary running now.
    pub binary: String,
}

/// What one config reload did (SIGHUP, `POST /admin/reload`, `tandem reload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadOutcome {
    /// When it ran, RFC 3339 (UTC, seconds).
    pub at: String,
    /// What asked for it: `sighup` or `admin`.
    pub trigger: &'static str,
    /// Whether the new config loaded and was applied; false: the old one stays, all of it.
    pub ok: bool,
    /// Why it was refused: `file:line: key: message` for a config error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Keys whose new values are in force now (`proxy.listeners`).
    pub applied: Vec<String>,
    /// Keys that changed but take effect only when tandem and the app start again (the app's
    /// command, env, user, workdir; and what a running tandem cannot swap yet): not applied.
    pub pending_restart: Vec<String>,
}

impl Status {
    /// The status before anything has happened.
    pub fn initial() -> Self {
        Self {
            phase: Phase::Starting,
            ready: false,
            app_pid: None,
            app_since: None,
            restarts: 0,
            last_exit_code: None,
            listeners: Vec::new(),
            reload: None,
            upgrade: None,
        }
    }
}
