//! The checked config: the merged [`Config`] plus everything a run used to derive from it at
//! start (addresses parsed, files read, patterns compiled, `OTEL_*` resolved), made once by
//! [`check`] when the config is loaded. A run starts from a [`Checked`] and `tandem check`
//! makes the same one, so both report the same errors, and no part re-validates its section.
//!
//! Invariant: this is data. It calls the pure parse and compile functions of the sections'
//! own modules (logs' patterns, health's probes, the `OTEL_*` resolver, the pass-through's
//! upstreams) and starts, binds and spawns nothing. Every error is a [`ConfigError`] naming
//! its key; [`super::layers::load`] then adds the file and line (or variable, or flag) that set
//! it.
use std::{collections::BTreeMap, net::SocketAddr, path::Path, sync::Arc};

use nix::sys::signal::Signal;

use super::{AdminConfig, Config, ConfigError};
use crate::{
    health::{probe::ProbeConfigError, HealthChecks},
    logs::{LogRules, LogsConfigError},
    otlp::env::BadValue,
    passthrough::config::{CheckedPassthrough, PassthroughError},
    telemetry::Settings,
};

/// The config, checked, and what was derived from it.
#[derive(Debug)]
pub struct Checked {
    /// The merged config, as written (defaults filled in).
    pub config: Config,
    /// The admin port: address parsed, token read.
    pub admin: Admin,
    /// The log pipeline's compiled patterns (multiline rules, redaction).
    pub logs: LogRules,
    /// The probes, the implicit readiness probe included.
    pub health: HealthChecks,
    /// tandem's own OTLP export, `OTEL_*` applied; None: off. Its resource holds what the
    /// config and `OTEL_RESOURCE_ATTRIBUTES` say; the host's detected attributes are added
    /// below them at start.
    pub telemetry: Option<Settings>,
    /// The OTLP pass-through: listen addresses, upstreams (TLS files read); None: off.
    pub passthrough: Option<CheckedPassthrough>,
}

/// The admin port, checked.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Where to listen; None: off (`admin.listen = ""`).
    pub listen: Option<SocketAddr>,
    /// The bearer token the port requires (from `admin.token_file`), if one is configured.
    pub token: Option<Arc<str>>,
    /// The address was set by the user, not the default: a failed bind is then fatal.
    pub explicit: bool,
}

/// Check `config` (merged from every layer) into its [`Checked`] form. `env` is tandem's
/// environment (for `OTEL_*`); without `require_command` a config with no command and no
/// `[logs.tail]` passes (`tandem check` of a platform file). Errors name the key only; the
/// caller places them.
pub fn check(
    config: Config,
    env: &BTreeMap<String, String>,
    require_command: bool,
    admin_explicit: bool,
) -> Result<Checked, ConfigError> {
    if require_command || !config.app.command.is_empty() {
        check_command(&config)?;
    }
    let admin = admin(&config.admin, admin_explicit)?;
    check_forward_signals(&config)?;
    let logs = config.logs.compile().map_err(logs_error)?;
    check_listeners(&config)?;
    check_outbound(&config)?;
    let health = health(&config)?;
    config.telemetry.validate().map_err(bad_value)?;
    check_restart(&config)?;
    // Last, what reads tandem's environment and files: the pass-through's upstreams, then
    // tandem's own export.
    let passthrough = config
        .telemetry
        .passthrough
        .check(&|k: &str| env.get(k).cloned())
        .map_err(passthrough_error)?;
    let telemetry = Settings::resolve(
        &config.telemetry,
        config.service.version.as_deref(),
        BTreeMap::new(),
        env,
    )
    .map_err(bad_value)?;
    Ok(Checked {
        config,
        admin,
        logs,
        health,
        telemetry,
        passthrough,
    })
}

/// Without a command tandem runs beside the app rather than above it (a Nomad sidecar task):
/// it then needs something to do, which is following the app's log files.
fn check_command(config: &Config) -> Result<(), ConfigError> {
    if config.app.command.is_empty() && config.logs.tail.is_none() {
        return Err(ConfigError::key(
            "",
            "no command to run: give one after `--` (tandem -- ./app) or set app.command",
        ));
    }
    if config.app.command.first().is_some_and(|p| p.is_empty()) {
        return Err(ConfigError::key("app.command", "the program name is empty"));
    }
    Ok(())
}

/// The admin address parsed; off loopback, a token is required (so metrics and status never
/// leak), and a configured token file is read (a missing or short token is a config error,
/// exit 64, before anything is bound).
fn admin(cfg: &AdminConfig, explicit: bool) -> Result<Admin, ConfigError> {
    let listen = cfg.listen.trim();
    if listen.is_empty() {
        return Ok(Admin {
            listen: None,
            token: None,
            explicit,
        });
    }
    let addr: SocketAddr = listen.parse().map_err(|_| {
        ConfigError::key(
            "admin.listen",
            format!("{listen:?} is not an IP:PORT address (or \"\" to turn the admin port off)"),
        )
    })?;
    let token = cfg.token_file.as_deref().map(read_token).transpose()?;
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(ConfigError::key(
            "admin.listen",
            format!("{listen} is reachable from other hosts; set admin.token_file (a file holding a bearer token) or listen on 127.0.0.1"),
        ));
    }
    Ok(Admin {
        listen: Some(addr),
        token,
        explicit,
    })
}

/// The admin token from `path` (trimmed): at least 16 characters.
fn read_token(path: &Path) -> Result<Arc<str>, ConfigError> {
    let bad = |message: String| ConfigError::key("admin.token_file", message);
    let text = std::fs::read_to_string(path)
        .map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(bad(format!(
            "{}: the token must be at least 16 characters",
            path.display()
        )));
    }
    Ok(Arc::from(token))
}

fn check_forward_signals(config: &Config) -> Result<(), ConfigError> {
    let bad = |message: String| Err(ConfigError::key("app.forward_signals", message));
    for sig in &config.app.forward_signals {
        match sig.0 {
            Signal::SIGKILL | Signal::SIGSTOP => {
                return bad(format!("{sig} cannot be caught, so it cannot be forwarded"))
            }
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT => {
                return bad(format!(
                    "{sig} starts tandem's stop sequence (see app.stop_signal); it cannot also be forwarded"
                ))
            }
            Signal::SIGCHLD => return bad("SIGCHLD is tandem's own (it reaps zombies)".into()),
            _ => {}
        }
    }
    Ok(())
}

fn logs_error(e: LogsConfigError) -> ConfigError {
    ConfigError::key(e.key, e.message)
}

/// Each outbound service's keys, distinct names, and listen addresses no listener uses.
fn check_outbound(config: &Config) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, o) in config.outbound.iter().enumerate() {
        let at = format!("outbound[{i}]");
        o.validate().map_err(|e| match e {
            tandem_proxy::ConfigError::Invalid {
                listener,
                key,
                reason,
            } => ConfigError::key(format!("{at}.{key}"), format!("{listener}: {reason}")),
            e => ConfigError::key(at.clone(), e.to_string()),
        })?;
        if !names.insert(o.name.as_str()) {
            return Err(ConfigError::key(
                format!("{at}.name"),
                format!(
                    "a second outbound service named {:?} (give each a distinct name)",
                    o.name
                ),
            ));
        }
        if let Ok(addr) = o.listen_addr() {
            if config.proxy.listeners.iter().any(|l| l.listen == addr) {
                return Err(ConfigError::key(
                    format!("{at}.listen"),
                    format!("{addr} is also a proxy listener's address"),
                ));
            }
        }
    }
    if let Some(f) = &config.outbound_proxy {
        f.listen_addr()
            .map_err(|e| ConfigError::key("outbound_proxy.listen", e.to_string()))?;
        if !config
            .outbound
            .iter()
            .any(|o| o.protocol != tandem_proxy::Protocol::Tcp)
        {
            return Err(ConfigError::key(
                "outbound_proxy",
                "needs an [[outbound]] service with protocol http or h2c to forward to",
            ));
        }
    }
    Ok(())
}

/// Each listener's keys (the proxy's own check; its files are read when it binds), and
/// distinct names.
fn check_listeners(config: &Config) -> Result<(), ConfigError> {
    let mut names = std::collections::HashSet::new();
    for (i, l) in config.proxy.listeners.iter().enumerate() {
        let at = format!("proxy.listeners[{i}]");
        l.validate().map_err(|e| match e {
            tandem_proxy::ConfigError::Invalid {
                listener,
                key,
                reason,
            } => ConfigError::key(
                format!("{at}.{key}"),
                format!("listener {listener}: {reason}"),
            ),
            e => ConfigError::key(at.clone(), e.to_string()),
        })?;
        if !names.insert(l.display_name()) {
            return Err(ConfigError::key(
                at,
                format!(
                    "a second listener named {:?} (give each a distinct name)",
                    l.display_name()
                ),
            ));
        }
    }
    Ok(())
}

/// The probes; without `[health.readiness]` but with proxy listeners, the implicit one.
fn health(config: &Config) -> Result<HealthChecks, ConfigError> {
    let mut checks = config.health.validate().map_err(|e| {
        let key = match &e.source {
            ProbeConfigError::Target { .. } => "target",
            ProbeConfigError::ZeroThreshold { field }
            | ProbeConfigError::ZeroDuration { field } => field,
        };
        ConfigError::key(format!("health.{}.{key}", e.probe), e.source.to_string())
    })?;
    if checks.readiness.is_none() {
        checks.readiness = config.implicit_readiness();
    }
    Ok(checks)
}

/// A telemetry key's or `OTEL_*` variable's value.
fn bad_value(e: BadValue) -> ConfigError {
    ConfigError::key(e.name, e.message)
}

fn passthrough_error(e: PassthroughError) -> ConfigError {
    match e {
        PassthroughError::Config { key, reason } => {
            ConfigError::key(format!("telemetry.passthrough.{key}"), reason)
        }
        PassthroughError::Upstream(u) => ConfigError::key(u.source_name, u.reason),
        e @ PassthroughError::Bind { .. } => ConfigError::keyed(&e.to_string()),
    }
}

fn check_restart(config: &Config) -> Result<(), ConfigError> {
    let r = &config.restart;
    if !(r.multiplier >= 1.0 && r.multiplier.is_finite()) {
        return Err(ConfigError::key(
            "restart.multiplier",
            format!("must be a number >= 1.0, got {}", r.multiplier),
        ));
    }
    if !(0.0..=1.0).contains(&r.jitter) {
        return Err(ConfigError::key(
            "restart.jitter",
            format!("must be between 0.0 and 1.0, got {}", r.jitter),
        ));
    }
    if r.initial_delay > r.max_delay {
        return Err(ConfigError::key(
            "restart.initial_delay",
            format!(
                "{} is larger than restart.max_delay ({})",
                humantime::format_duration(r.initial_delay),
                humantime::format_duration(r.max_delay)
            ),
        ));
    }
    if r.start_limit_burst > 0 && r.start_limit_interval.is_zero() {
        return Err(ConfigError::key(
            "restart.start_limit_interval",
            "must be > 0 when restart.start_limit_burst is set",
        ));
    }
    if r.mode == super::RestartMode::Rolling {
        let name = r.port_env.as_str();
        if name.is_empty()
            || name.contains('=')
            || name.contains('\0')
            || name.starts_with(|c: char| c.is_ascii_digit())
        {
            return Err(ConfigError::key(
                "restart.port_env",
                format!("{name:?} is not an environment variable name"),
            ));
        }
        if r.ready_timeout.is_zero() {
            return Err(ConfigError::key("restart.ready_timeout", "must be > 0"));
        }
        if !config.app.command.is_empty() || !config.proxy.listeners.is_empty() {
            config.rolling_port()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::{load, ConfigError, Overrides};

    fn overrides() -> Overrides {
        Overrides {
            command: vec!["true".into()],
            require_command: true,
            ..Overrides::default()
        }
    }

    /// Load `text` as a config file (and `env`); the error, and the file's path.
    fn error(text: &str, env: &[(&str, &str)]) -> (ConfigError, PathBuf) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("tandem.toml");
        std::fs::write(&path, text).expect("write");
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let err = load(std::slice::from_ref(&path), env, &overrides()).expect_err("an error");
        (err, path)
    }

    #[test]
    fn a_bad_regex_names_file_line_and_key() {
        let (e, path) = error(
            "[app]\nstop_timeout = \"5s\"\n\n[logs.stdout.multiline]\npreset = \"custom\"\nstart = \"([\"\n",
            &[],
        );
        assert_eq!(e.key, "logs.stdout.multiline.start", "{e}");
        assert_eq!(e.line, Some(6), "{e}");
        assert_eq!(e.file.as_ref(), Some(&path), "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "{}:6: logs.stdout.multiline.start: ",
                path.display()
            )),
            "{e}"
        );
        let (e, _) = error("[logs.redact]\npatterns = [\"ok\", \"(\"]\n", &[]);
        assert_eq!(
            (e.key.as_str(), e.line),
            ("logs.redact.patterns[1]", Some(2)),
            "{e}"
        );
    }

    #[test]
    fn an_unreadable_admin_token_file_names_file_line_and_key() {
        let (e, path) = error(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"/nonexistent/tandem-token\"\n",
            &[],
        );
        assert_eq!(e.key, "admin.token_file", "{e}");
        assert_eq!(e.line, Some(3), "{e}");
        assert_eq!(e.file.as_ref(), Some(&path), "{e}");
        assert!(e.message.contains("/nonexistent/tandem-token"), "{e}");
    }

    #[test]
    fn a_bad_address_names_file_line_and_key_or_the_variable() {
        let (e, path) = error("[admin]\n\nlisten = \"localhost\"\n", &[]);
        assert_eq!((e.key.as_str(), e.line), ("admin.listen", Some(3)), "{e}");
        assert_eq!(e.file.as_ref(), Some(&path), "{e}");
        let (e, _) = error(
            "[telemetry.passthrough]\nenabled = true\nendpoint = \"http://127.0.0.1:9\"\nhttp_listen = \"127.0.0.1\"\n",
            &[],
        );
        assert_eq!(
            (e.key.as_str(), e.line),
            ("telemetry.passthrough.http_listen", Some(4)),
            "{e}"
        );
        // Set by a variable: the variable is named, not a file.
        let (e, _) = error("", &[("TANDEM_ADMIN_LISTEN", "nowhere")]);
        assert_eq!(e.via.as_deref(), Some("TANDEM_ADMIN_LISTEN"), "{e}");
        assert!(
            e.to_string()
                .starts_with("TANDEM_ADMIN_LISTEN: admin.listen: "),
            "{e}"
        );
    }

    #[test]
    fn bad_otlp_headers_name_the_key_or_the_variable() {
        let (e, _) = error(
            "[telemetry]\nendpoint = \"http://127.0.0.1:4318\"\n\n[telemetry.headers]\n\"x-key\" = \"a\\u0001b\"\n",
            &[],
        );
        assert_eq!(
            (e.key.as_str(), e.line),
            ("telemetry.headers.x-key", Some(5)),
            "{e}"
        );
        let (e, _) = error(
            "",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "bad name=x"),
            ],
        );
        assert_eq!(e.key, "OTEL_EXPORTER_OTLP_HEADERS", "{e}");
        assert_eq!(e.file, None, "{e}");
    }

    #[test]
    fn the_second_listener_is_placed_at_its_own_lines() {
        let (e, _) = error(
            "[[proxy.listeners]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:1\"\n\n[[proxy.listeners]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:1\"\nname = \"a\"\n\n[[proxy.listeners]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:1\"\n",
            &[],
        );
        assert_eq!(e.key, "proxy.listeners[2]", "{e}");
        assert_eq!(e.line, Some(10), "{e}");
    }

    #[test]
    fn the_checked_form_holds_what_a_run_starts_from() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "0123456789abcdef0123\n").expect("write");
        let path = dir.path().join("tandem.toml");
        std::fs::write(
            &path,
            format!(
                "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken_file = {:?}\n[[proxy.listeners]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:3000\"\n",
                token.display().to_string()
            ),
        )
        .expect("write");
        let loaded = load(std::slice::from_ref(&path), [], &overrides()).expect("loads");
        let c = &loaded.checked;
        assert_eq!(c.admin.listen, Some("0.0.0.0:9901".parse().expect("addr")));
        assert_eq!(c.admin.token.as_deref(), Some("0123456789abcdef0123"));
        assert!(c.admin.explicit);
        assert!(c.health.readiness.is_some(), "the implicit readiness probe");
        assert!(c.telemetry.is_none() && c.passthrough.is_none());
    }
}
