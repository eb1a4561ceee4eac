//! The command line: `tandem [OPTIONS] -- CMD [ARGS...]` and `tandem check`.
//!
//! Flags are the top config layer; each one maps to a dotted config key so that `tandem check`
//! can say which flag set a value. Usage errors exit 64 like config errors do.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, Overrides};

const AFTER_HELP: &str = "\
Config layers, later wins: built-in defaults < files `include`d by a config file < --config
files in order < TANDEM_* environment variables (TANDEM_RESTART_POLICY=always sets
restart.policy) < flags. `tandem check` prints the merged config and where each value came from.

Exit codes: the app's own; 128+N when signal N ended it; 64 bad command line or config;
70 internal error; 75 restart start limit hit; 126 command cannot be executed; 127 command
not found.

Examples:
  tandem -- ./server --port 3000
  tandem --restart on-failure --stop-timeout 30s -- ./server
  tandem --config /etc/tandem/app.toml check";

/// A sidecar supervisor: runs your app as its child and shares its lifecycle.
#[derive(Debug, Parser)]
#[command(name = "tandem", version, after_help = AFTER_HELP, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// Verbs other than the default (run).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config and print the effective, merged result with the source of each value.
    Check(Box<RunArgs>),
    /// Print the status of a running tandem (from its admin port): a table for people, or the
    /// `/status` JSON with --json.
    Status(StatusArgs),
    /// Exit 0 when a running tandem reports its app ready, 1 otherwise (for HEALTHCHECK in
    /// images without curl).
    Health(AdminArgs),
    /// Ask a running tandem to reload its config in place (as SIGHUP does); prints the result
    /// as JSON, exits 1 when the new config was refused.
    Reload(ActionArgs),
    /// Ask a running tandem to stop its app and start it again, requests held by the proxy
    /// meanwhile; prints the result as JSON (the new pid), exits 1 when it could not.
    Restart(ActionArgs),
    /// Ask a running tandem to exec its binary again (or --binary) in the same process, handing
    /// over the app (same pid), its pipes and the listening sockets: no request fails. Waits
    /// for the new image and prints its result as JSON; exits 1 when refused or failed (the
    /// old image keeps running then).
    Upgrade(UpgradeArgs),
}

/// `tandem upgrade`.
#[derive(Debug, Clone, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub admin: ActionArgs,
    /// The new binary (default: the file the running tandem was started from).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// How long to wait for the new image to report.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// Where a running tandem's admin port is, and the token its actions need.
#[derive(Debug, Clone, Args)]
pub struct ActionArgs {
    /// Admin address of the running tandem.
    #[arg(long, value_name = "ADDR", env = "TANDEM_ADMIN_LISTEN", default_value = crate::config::DEFAULT_ADMIN)]
    pub admin: String,
    /// File holding the admin token (the running tandem's admin.token_file), sent as
    /// `Authorization: Bearer`.
    #[arg(long, value_name = "FILE", env = "TANDEM_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

// === impl ActionArgs ===

impl ActionArgs {
    /// The token from `--token-file` (trimmed), if given.
    pub fn token(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.token_file else {
            return Ok(None);
        };
        let raw = std::fs::read_to_string(path)
            .map_err(|e| format!("--token-file {}: {e}", path.display()))?;
        Ok(Some(raw.trim().to_string()))
    }
}

/// Where a running tandem's admin port is.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin address of the running tandem.
    #[arg(long, value_name = "ADDR", env = "TANDEM_ADMIN_LISTEN", default_value = crate::config::DEFAULT_ADMIN)]
    pub admin: String,
}

/// `tandem status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub admin: ActionArgs,
    /// Print `/status` as it is (JSON), for scripts.
    #[arg(long)]
    pub json: bool,
}

/// Options shared by running and checking.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Config file (TOML); repeat to layer several, later wins.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Service name in events, logs and telemetry [service.name].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// When to restart the app: never, on-failure, always [restart.policy].
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Signal that asks the app to stop, e.g. SIGTERM, SIGQUIT [app.stop_signal].
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Time between the stop signal and SIGKILL, e.g. 10s [app.stop_timeout].
    #[arg(long, value_name = "DURATION")]
    pub stop_timeout: Option<String>,
    /// Working directory of the app [app.workdir].
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run the app as this user (name or uid) [app.user].
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Run the app with this group (name or gid) [app.group].
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Admin port address (/healthz /readyz /metrics /status); "" turns it off [admin.listen].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Proxy a port of the app: `[http:|h2c:|tcp:]LISTEN=UPSTREAM`, e.g. 8080=127.0.0.1:3000;
    /// repeatable [proxy.listeners].
    #[arg(long = "proxy", value_name = "LISTEN=UPSTREAM")]
    pub proxy: Vec<String>,
    /// Set a variable in the app's environment; repeatable [app.env].
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Set any config key, e.g. --set restart.max_delay=1m; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The app's command and its arguments, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub cmd: Vec<String>,
}

// === impl RunArgs ===

impl RunArgs {
    /// The flags as config overrides, or an error naming the bad flag.
    pub fn overrides(&self) -> Result<Overrides, ConfigError> {
        let mut values = Vec::new();
        let mut push = |key: &str, value: &Option<String>, flag: &str| {
            if let Some(v) = value {
                values.push((key.to_string(), v.clone(), flag.to_string()));
            }
        };
        push("service.name", &self.name, "--name");
        push("restart.policy", &self.restart, "--restart");
        push("app.stop_signal", &self.stop_signal, "--stop-signal");
        push("app.stop_timeout", &self.stop_timeout, "--stop-timeout");
        push("app.workdir", &self.workdir, "--workdir");
        push("app.user", &self.user, "--user");
        push("app.group", &self.group, "--group");
        push("admin.listen", &self.admin, "--admin");
        for kv in &self.env {
            let (k, v) = split_kv(kv).ok_or_else(|| {
                ConfigError::via("--env", "app.env", format!("{kv:?}: expected KEY=VALUE"))
            })?;
            values.push((format!("app.env.{k}"), v.to_string(), format!("--env {k}")));
        }
        for kv in &self.set {
            let (k, v) = split_kv(kv).ok_or_else(|| {
                ConfigError::via("--set", "", format!("{kv:?}: expected KEY=VALUE"))
            })?;
            values.push((k.to_string(), v.to_string(), format!("--set {k}")));
        }
        let proxy = self
            .proxy
            .iter()
            .map(|spec| {
                tandem_proxy::parse_listener_spec(spec).map_err(|e| {
                    ConfigError::via("--proxy", "proxy.listeners", format!("{spec:?}: {e}"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Overrides {
            command: self.cmd.clone(),
            values,
            require_command: true,
            proxy,
        })
    }
}

fn split_kv(s: &str) -> Option<(&str, &str)> {
    let (k, v) = s.split_once('=')?;
    (!k.trim().is_empty()).then_some((k.trim(), v))
}
