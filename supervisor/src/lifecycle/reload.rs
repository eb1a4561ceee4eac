//! Config reload in place: re-read the files, `TANDEM_*` variables and flags the run started
//! from, check them exactly as at start ([`config::load`]), then apply what can change under a
//! running app and report the rest.
//!
//! The one thing to know: a reload is all or nothing up to the first change. A config that
//! fails to load, or a proxy listener that cannot be bound or whose files cannot be read,
//! refuses the whole reload and the old config stays. What a running tandem cannot swap (the
//! app's command, env, user, workdir; the log pipeline; probes...) is never applied behind the
//! user's back: it is reported as `pending_restart` and keeps its old value until tandem starts
//! again. Applied today: `proxy.listeners`; the probes (`health.readiness`, `health.liveness`,
//! and the implicit readiness probe when the listeners' upstreams change), replaced under the
//! running app without a not-ready blip; the log readers' parsing, multiline, redaction,
//! `max_line_bytes` and `attributes` (not in tail mode), switched at each reader's next line.
use std::path::PathBuf;

use nix::sys::signal::Signal;

use super::Supervisor;
use crate::{
    config::{self, Config, Overrides},
    phase::{Phase, ReloadOutcome},
};

/// Where the run's config came from, to read it again the same way.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The `--config` files, in order.
    pub files: Vec<PathBuf>,
    /// The flags (and the command after `--`), as the run had them.
    pub overrides: Overrides,
}

/// What a reload did.
pub(super) struct Reloaded {
    /// Keys in force now.
    pub applied: Vec<String>,
    /// Keys that changed and wait for a restart.
    pub pending: Vec<String>,
    /// The config read.
    pub new: Config,
}

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Sighup,
    Admin,
}

/// Keys a reload applies in place (the rest of what changed is pending a restart).
const APPLIED: [&str; 8] = [
    "proxy.listeners",
    "health.readiness",
    "health.liveness",
    "logs.stdout",
    "logs.stderr",
    "logs.redact",
    "logs.max_line_bytes",
    "logs.attributes",
];

// === impl ConfigSource ===

impl ConfigSource {
    /// Load and check it again: the same function a run and `tandem check` use.
    pub fn load(&self) -> Result<config::Loaded, config::ConfigError> {
        let loaded = config::load(&self.files, std::env::vars(), &self.overrides)?;
        for warning in &loaded.warnings {
            tracing::warn!(event = "config_warning", "{warning}");
        }
        Ok(loaded)
    }
}

/// The keys whose values differ between `old` and `new`, as `section.key` (two levels: a
/// listener list is one key), sorted.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old), Ok(new)) = (serde_json::to_value(old), serde_json::to_value(new)) else {
        return vec!["(config)".to_string()];
    };
    let empty = serde_json::Map::new();
    let obj = |v: &serde_json::Value| v.as_object().cloned().unwrap_or_default();
    let (old, new) = (obj(&old), obj(&new));
    let mut keys = Vec::new();
    let sections: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for section in sections {
        let (a, b) = (old.get(section), new.get(section));
        if a == b {
            continue;
        }
        match (a.and_then(|v| v.as_object()), b.and_then(|v| v.as_object())) {
            (Some(_), _) | (_, Some(_)) => {
                let a = a.and_then(|v| v.as_object()).unwrap_or(&empty);
                let b = b.and_then(|v| v.as_object()).unwrap_or(&empty);
                let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for k in names {
                    if a.get(k) != b.get(k) {
                        keys.push(format!("{section}.{k}"));
                    }
                }
            }
            _ => keys.push(section.clone()),
        }
    }
    keys
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

// === impl Supervisor ===

impl Supervisor<'_> {
    /// Reload the config (see the module's doc), publish the result on `/status` and log it.
    pub(super) async fn reload(&mut self, trigger: Trigger) -> ReloadOutcome {
        let mut outcome = ReloadOutcome {
            at: now(),
            trigger: match trigger {
                Trigger::Sighup => "sighup",
                Trigger::Admin => "admin",
            },
            ok: false,
            error: None,
            applied: Vec::new(),
            pending_restart: Vec::new(),
        };
        match self.reload_config().await {
            Ok(r) => {
                outcome.ok = true;
                outcome.applied = r.applied;
                outcome.pending_restart = r.pending;
            }
            Err(error) => outcome.error = Some(error),
        }
        // On /status before the log line: whoever reads the event finds the result there.
        self.machine.set_reload(outcome.clone());
        match &outcome.error {
            None => {
                tracing::info!(
                    event = "config_reloaded",
                    trigger = outcome.trigger,
                    applied = ?outcome.applied,
                    pending_restart = ?outcome.pending_restart,
                    "config reloaded"
                );
                if !outcome.pending_restart.is_empty() {
                    tracing::warn!(
                        event = "reload_pending_restart",
                        keys = ?outcome.pending_restart,
                        "changed keys not applied: the app's with `tandem restart`, tandem's own with `tandem upgrade` (the app keeps running) or when tandem starts again"
                    );
                }
            }
            Some(error) => {
                tracing::error!(event = "reload_failed", trigger = outcome.trigger, error = %error, "config reload refused; the old config stays");
            }
        }
        outcome
    }

    /// Load, compare, apply: the applied and the pending keys and the new config, or why
    /// nothing changed. A restart runs it too, then applies what a new app process takes.
    pub(super) async fn reload_config(&mut self) -> Result<Reloaded, String> {
        if matches!(self.machine.phase(), Phase::Stopping | Phase::Stopped) {
            return Err("tandem is stopping".to_string());
        }
        let Some(source) = self.core.source.as_ref() else {
            return Err("this run has no config source to read again".to_string());
        };
        let loaded = source.load().map_err(|e| e.to_string())?;
        let config::Checked {
            config: new,
            logs: log_rules,
            health: checks,
            ..
        } = loaded.checked;
        let mut applied = Vec::new();
        let mut pending = Vec::new();
        // Tail mode's followers keep the settings they started with.
        let tailing = self.core.cfg.logs.tail.is_some() || new.logs.tail.is_some();
        for key in changed_keys(&self.core.cfg, &new) {
            if APPLIED.contains(&key.as_str()) && !(tailing && key.starts_with("logs.")) {
                applied.push(key);
            } else {
                pending.push(key);
            }
        }
        // Without a readiness probe the implicit one checks the proxy's upstreams.
        let upstreams = |c: &Config| {
            let mut u: Vec<String> = c
                .proxy
                .listeners
                .iter()
                .map(|l| l.upstream.clone())
                .collect();
            u.sort();
            u.dedup();
            u
        };
        let implicit = new.health.readiness.is_none()
            && upstreams(&self.core.cfg) != upstreams(&new)
            && applied.iter().any(|k| k == "proxy.listeners");
        if applied.iter().any(|k| k == "proxy.listeners") {
            // Rolling mode: the upstreams point at the current app process's port, wherever
            // the file says the first one listened.
            let listeners = match &self.core.port {
                Some((_, port)) => super::rolling::listeners_at(&new.proxy.listeners, *port),
                None => new.proxy.listeners.clone(),
            };
            match self.parts.proxy.serving_mut() {
                Some(serving) => {
                    let done = serving
                        .reconfigure(&listeners)
                        .await
                        .map_err(|e| format!("proxy.listeners: {e}"))?;
                    tracing::info!(event = "proxy_reconfigured", added = ?done.added, removed = ?done.removed, changed = ?done.changed, unchanged = done.unchanged.len(), "proxy listeners reconfigured");
                    let listeners = serving
                        .local_addrs()
                        .iter()
                        .map(|(name, addr)| (name.clone(), addr.to_string()))
                        .collect();
                    self.machine.set_listeners(listeners);
                    self.core.cfg.proxy.listeners = new.proxy.listeners.clone();
                }
                // Started without listeners: the proxy's hooks were never built.
                None => {
                    applied.retain(|k| k != "proxy.listeners");
                    pending.push("proxy.listeners".to_string());
                    pending.sort();
                }
            }
        }
        if implicit || applied.iter().any(|k| k.starts_with("health.")) {
            // The running app's probes are replaced now, its readiness kept until the new
            // readiness probe decides.
            // Rolling mode: the probes aim at the current app process's port.
            let checks = super::rolling::checks_at(checks, &new, &self.core.port);
            self.core.health.replace_checks(checks);
            self.core.cfg.health = new.health.clone();
            if implicit && !applied.iter().any(|k| k == "health.readiness") {
                applied.push("health.readiness (implicit: the proxy's upstreams)".to_string());
            }
        }
        if applied.iter().any(|k| k.starts_with("logs.")) {
            // Each pipe reader switches at its next line boundary.
            self.parts.logs.apply(&new.logs, &log_rules);
            let logs = &mut self.core.cfg.logs;
            logs.stdout = new.logs.stdout.clone();
            logs.stderr = new.logs.stderr.clone();
            logs.redact = new.logs.redact.clone();
            logs.max_line_bytes = new.logs.max_line_bytes;
            logs.attributes = new.logs.attributes.clone();
        }
        Ok(Reloaded {
            applied,
            pending,
            new,
        })
    }

    /// SIGHUP: tandem's own reload (files reopened, then the config), then, when SIGHUP is
    /// in the forward list, the app's.
    pub(super) async fn on_hup(&mut self, forward: bool, pid: Option<nix::unistd::Pid>) {
        self.reopen_on_hup(Signal::SIGHUP);
        self.reload(Trigger::Sighup).await;
        if forward {
            match pid {
                Some(pid) => self.forward(pid, Signal::SIGHUP),
                None => {
                    tracing::debug!(signal = %Signal::SIGHUP, "no app running; signal not forwarded")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_keys_name_section_and_key() {
        let old = Config::default();
        let mut new = old.clone();
        assert!(changed_keys(&old, &new).is_empty());
        new.app.command = vec!["./server".into()];
        new.app.env.insert("A".into(), "1".into());
        new.proxy.listeners =
            vec![tandem_proxy::parse_listener_spec("8080=127.0.0.1:3000").expect("spec")];
        assert_eq!(
            changed_keys(&old, &new),
            ["app.command", "app.env", "proxy.listeners"]
        );
    }
}
