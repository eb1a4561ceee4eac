//! Asked restarts (`tandem restart`, `POST /admin/restart`): the config read again and its
//! app section applied, then either the ordinary stop-then-start or, with
//! `restart.mode = "rolling"`, a rolling restart.
//!
//! ```text
//! restart asked ─▶ config read again (refused: the app keeps running, the error is the reply)
//!   stop-start: proxy listeners reconfigured ─▶ stop the app (requests held) ─▶ start it
//!               from the new app section (lifecycle/mod.rs's restart path)
//!   rolling:    fresh loopback port ─▶ spawn a second app process (PORT / {port}) ─▶ its
//!               readiness check on that port (restart.ready_timeout; it exits or times out:
//!               stop it, keep the old one) ─▶ every listener pointed at the new port
//!               (Serving::reconfigure: same sockets) ─▶ the new process is the app (probes
//!               follow its port) ─▶ the old listener settings' requests finish (drain_timeout)
//!               ─▶ only then the old process gets its stop signal (stop_timeout, SIGKILL)
//! ```
//! The one thing to know: in rolling mode the proxy's readiness never drops, so no request is
//! held or refused; the old process is stopped only once nothing is in flight to it. A restart
//! first applies what a reload applies (`reload_config`: listeners, probes, log settings), then
//! the keys a new app process takes (`app.*` but `forward_signals`); the rest stays
//! `pending_restart` (it needs tandem itself started again, e.g. by `tandem upgrade`).
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::time::{sleep, Instant};

use super::{App, Event, Outcome, Supervisor, LOST};
use crate::{
    child::{self, AppSpec, ExitStatus, StdioMode},
    config::{AppConfig, Config},
    control,
    health::probe::ProbeState,
    phase::{Phase, ReloadOutcome},
    signals::SignalEvent,
};

/// Give the app process its `port`: in the environment variable `env`, and for `{port}` in
/// its program and arguments.
pub(super) fn give_port(spec: &mut AppSpec, env: &str, port: u16) {
    let port = port.to_string();
    spec.env.insert(env.to_string(), port.clone());
    spec.program = spec.program.replace("{port}", &port);
    for arg in &mut spec.args {
        *arg = arg.replace("{port}", &port);
    }
}

/// A free port on the loopback `host` (the kernel's pick, released at once for the app).
fn free_port(host: &str) -> std::io::Result<u16> {
    let ip: std::net::IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
        "localhost" => std::net::Ipv4Addr::LOCALHOST.into(),
        h => h.parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{host} is not an address"),
            )
        })?,
    };
    let listener = std::net::TcpListener::bind((ip, 0))?;
    Ok(listener.local_addr()?.port())
}

/// The listeners with every upstream's port set to `port` (rolling mode: they all point at
/// the app's one port, checked at load).
pub(super) fn listeners_at(
    listeners: &[tandem_proxy::ListenerConfig],
    port: u16,
) -> Vec<tandem_proxy::ListenerConfig> {
    listeners
        .iter()
        .map(|l| {
            let mut l = l.clone();
            if let Ok(a) = l.upstream.parse::<http::uri::Authority>() {
                l.upstream = format!("{}:{port}", a.host());
            }
            l
        })
        .collect()
}

/// `checks` made from `cfg` (aimed at its configured app port), aimed at the current app
/// process's `port` instead (rolling mode, after a rolling restart moved it).
pub(super) fn checks_at(
    mut checks: crate::health::HealthChecks,
    cfg: &Config,
    port: &Option<(String, u16)>,
) -> crate::health::HealthChecks {
    if let (Ok(Some((_, from))), Some((_, to))) = (cfg.rolling_port(), port) {
        checks.readiness = checks.readiness.map(|p| p.retarget(from, *to));
        checks.liveness = checks.liveness.map(|p| p.retarget(from, *to));
    }
    checks
}

/// The config read again for a restart, and which of its changes the restart applies.
struct Staged {
    cfg: Config,
    applied: Vec<String>,
    pending: Vec<String>,
}

/// Whether a restart applies changed `key` (a new app process takes it).
fn applied_by_restart(key: &str) -> bool {
    (key.starts_with("app.") && key != "app.forward_signals") || key == "proxy.listeners"
}

/// The app section a restart applies: the new one, but the forwarded signals (their handlers
/// were installed at start).
fn next_app(old: &AppConfig, new: &AppConfig) -> AppConfig {
    AppConfig {
        forward_signals: old.forward_signals.clone(),
        ..new.clone()
    }
}

/// Why a rolling restart ended before the new process took over.
enum Abort {
    /// It could not be done; the old process keeps serving.
    Failed(String),
    /// Something the run loop must handle: a stop signal, or the old process exited.
    Outcome(Outcome),
}

// === impl Supervisor ===

impl Supervisor<'_> {
    /// [`Supervisor::wait_running`], with asked restarts prepared here: the config read again
    /// (a refused one answers the restart and the app keeps running); in rolling mode the
    /// whole restart is done here and the wait goes on with the new process.
    pub(super) async fn wait_running_or_roll(&mut self, app: &mut App) -> Outcome {
        loop {
            let req = match self.wait_running(app).await {
                Outcome::RestartRequested(req) => req,
                other => return other,
            };
            let staged = match self.reread().await {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(event = "restart_refused", error = %error, pid = app.pid.as_raw(), "restart refused; the app keeps running");
                    self.refuse(req, error, Some(app.pid));
                    continue;
                }
            };
            if self.core.port.is_none() {
                return Outcome::RestartRequested(self.stage_stop_start(req, staged));
            }
            if let Some(outcome) = self.roll(app, req, staged).await {
                return outcome;
            }
        }
    }

    /// The spec to start the app from next: a stop-start restart's staged app section comes
    /// into force now (the old process was stopped with the old one's signal).
    pub(super) fn next_spec(&mut self, first: &AppSpec) -> AppSpec {
        if let Some((app, spec)) = self.core.staged.take() {
            self.core.cfg.app = app;
            self.parts.spec = Some(spec);
        }
        self.parts.spec.clone().unwrap_or_else(|| first.clone())
    }

    /// Read the config again for a restart; with a stop-start restart, reconfigure the proxy's
    /// listeners now as a reload does (a refused one refuses the restart). Publishes the
    /// result on `/status` (as the last reload, trigger `restart`).
    async fn reread(&mut self) -> Result<Staged, String> {
        let mut outcome = ReloadOutcome {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            trigger: "restart",
            ok: false,
            error: None,
            applied: Vec::new(),
            pending_restart: Vec::new(),
        };
        let staged = self.reread_config().await;
        match &staged {
            Ok(s) => {
                outcome.ok = true;
                outcome.applied = s.applied.clone();
                outcome.pending_restart = s.pending.clone();
            }
            Err(e) => outcome.error = Some(e.clone()),
        }
        self.machine.set_reload(outcome);
        staged
    }

    async fn reread_config(&mut self) -> Result<Staged, String> {
        if matches!(self.machine.phase(), Phase::Stopping | Phase::Stopped) {
            return Err("tandem is stopping".to_string());
        }
        if self.core.source.is_none() {
            // Nothing to read again: the restart starts what runs now.
            return Ok(Staged {
                cfg: self.core.cfg.clone(),
                applied: Vec::new(),
                pending: Vec::new(),
            });
        }
        // Everything a reload applies in place, applied first (listeners, probes, log
        // settings); then what a new app process takes.
        let r = self.reload_config().await?;
        let mut applied = r.applied;
        let mut pending = Vec::new();
        for key in r.pending {
            if applied_by_restart(&key) && key != "proxy.listeners" {
                applied.push(key);
            } else {
                pending.push(key);
            }
        }
        applied.sort();
        pending.sort();
        Ok(Staged {
            cfg: r.new,
            applied,
            pending,
        })
    }

    /// Answer an asked restart that was refused; the app keeps running.
    fn refuse(&self, req: control::Request, error: String, pid: Option<Pid>) {
        let outcome = control::RestartOutcome {
            ok: false,
            error: Some(error),
            pid: pid.map(Pid::as_raw),
            restarts: self.machine.restarts(),
        };
        let _ = req.reply.send(control::Reply::Restart(outcome));
    }

    /// A stop-start restart: the new app section is staged (in force once the old process is
    /// stopped, see [`Supervisor::next_spec`]), and the reply says what was applied.
    fn stage_stop_start(&mut self, req: control::Request, staged: Staged) -> control::Request {
        let app = next_app(&self.core.cfg.app, &staged.cfg.app);
        let mut cfg = self.core.cfg.clone();
        cfg.app = app.clone();
        if let Some(spec) = self.parts.respec(&cfg, None) {
            self.core.staged = Some((app, spec));
        }
        if !staged.applied.is_empty() {
            tracing::info!(event = "restart_applies", applied = ?staged.applied, pending_restart = ?staged.pending, "the restart applies changed config");
        }
        // The run loop answers with the new pid: add what was applied on the way.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let control::Request { action, reply } = req;
        tokio::spawn(async move {
            if let Ok(control::Reply::Restart(outcome)) = rx.await {
                let _ = reply.send(control::Reply::RestartApplied(control::RestartApplied {
                    outcome,
                    mode: "stop-start",
                    applied: staged.applied,
                    pending_restart: staged.pending,
                }));
            }
        });
        control::Request { action, reply: tx }
    }

    /// A rolling restart (see the module's doc). None: done or failed (answered), the wait
    /// goes on with `app` (the new process on success); Some: the run loop's to handle.
    async fn roll(
        &mut self,
        app: &mut App,
        req: control::Request,
        staged: Staged,
    ) -> Option<Outcome> {
        let (host, old_port) = self.core.port.clone()?;
        let old_app_cfg = self.core.cfg.app.clone();
        let app_cfg = next_app(&old_app_cfg, &staged.cfg.app);
        let mut cfg = self.core.cfg.clone();
        cfg.app = app_cfg.clone();
        tracing::info!(
            event = "restart_requested",
            pid = app.pid.as_raw(),
            mode = "rolling",
            "restart asked on the admin port: rolling restart"
        );
        let (new, readiness) = match self.start_replacement(&cfg, &host, old_port, app).await {
            Ok(started) => started,
            Err(Abort::Failed(error)) => {
                tracing::error!(event = "rolling_restart_failed", error = %error, pid = app.pid.as_raw(), "rolling restart failed; the old app process keeps serving");
                self.refuse(req, error, Some(app.pid));
                return None;
            }
            Err(Abort::Outcome(outcome)) => {
                self.refuse(
                    req,
                    "the rolling restart was interrupted (see the log)".to_string(),
                    Some(app.pid),
                );
                return Some(outcome);
            }
        };
        let (new_app, new_port, spec) = new;
        // Every listener now sends new connections to the new process; the old settings'
        // connections finish on the old one.
        let listeners = listeners_at(&staged.cfg.proxy.listeners, new_port);
        let swapped = match self.parts.proxy.serving_mut() {
            Some(serving) => serving.reconfigure(&listeners).await.map(|done| {
                let addrs = serving
                    .local_addrs()
                    .iter()
                    .map(|(name, addr)| (name.clone(), addr.to_string()))
                    .collect();
                (done, addrs)
            }),
            None => Ok(Default::default()),
        };
        let (done, addrs) = match swapped {
            Ok(s) => s,
            Err(e) => {
                let error = format!("proxy.listeners: {e}");
                tracing::error!(event = "rolling_restart_failed", error = %error, pid = app.pid.as_raw(), "rolling restart failed; the old app process keeps serving");
                let mut new_app = new_app;
                self.stop_other(&mut new_app, &cfg.app, "replacement").await;
                self.refuse(req, error, Some(app.pid));
                return None;
            }
        };
        tracing::info!(event = "proxy_reconfigured", changed = ?done.changed, added = ?done.added, removed = ?done.removed, port = new_port, "proxy listeners pointed at the new app process");
        self.machine.set_listeners(addrs);
        // The new process is the app from here on.
        self.core.health.app_replaced(old_port, new_port, readiness);
        self.core.port = Some((host, new_port));
        self.core.cfg.app = app_cfg;
        self.core.cfg.proxy.listeners = staged.cfg.proxy.listeners.clone();
        self.parts.spec = Some(spec);
        self.machine.count_restart_in_place();
        self.machine.app_started(new_app.pid);
        if let Some(guard) = &self.core.guard {
            guard.track(Some(new_app.pid));
        }
        let mut old = std::mem::replace(app, new_app);
        tracing::info!(
            event = "started",
            pid = app.pid.as_raw(),
            restarts = self.machine.restarts(),
            port = new_port,
            "the new app process took over; draining the old one"
        );
        // The old process is stopped only once nothing is in flight to it.
        let stop = self.drain_old(&mut old).await;
        let stop = self.stop_old(&mut old, &old_app_cfg, stop).await;
        let outcome = control::RestartOutcome {
            ok: true,
            error: None,
            pid: Some(app.pid.as_raw()),
            restarts: self.machine.restarts(),
        };
        let _ = req
            .reply
            .send(control::Reply::RestartApplied(control::RestartApplied {
                outcome,
                mode: "rolling",
                applied: staged.applied,
                pending_restart: staged.pending,
            }));
        stop.map(Outcome::StopRequested)
    }

    /// Spawn the second process on a fresh port and wait for its readiness; on failure it is
    /// stopped again.
    #[allow(clippy::type_complexity)]
    async fn start_replacement(
        &mut self,
        cfg: &Config,
        host: &str,
        old_port: u16,
        old: &mut App,
    ) -> Result<((App, u16, AppSpec), crate::health::probe::ProbeHandle), Abort> {
        let port = free_port(host)
            .map_err(|e| Abort::Failed(format!("no free port on {host} for the new app: {e}")))?;
        let spec = self
            .parts
            .respec(cfg, Some(port))
            .ok_or_else(|| Abort::Failed("no app command".to_string()))?;
        let mut spawned = self
            .core
            .reaper
            .spawn_app(&spec, StdioMode::Pipe)
            .map_err(|e| Abort::Failed(format!("cannot start the new app process: {e}")))?;
        let exit = self.core.reaper.watch(spawned.pid);
        let logs = self.attach_logs(&mut spawned, self.machine.restarts() + 1);
        let mut new = App {
            pid: spawned.pid,
            exit,
            started: Instant::now(),
            logs,
        };
        tracing::info!(event = "rolling_started", pid = new.pid.as_raw(), port, command = %crate::config::layers::redact_text(&cfg.app.command.join(" ")), "second app process started; waiting for its readiness");
        let probe = self.core.health.probe_replacement(host, old_port, port);
        let mut status = probe.subscribe();
        let timeout = sleep(self.core.cfg.restart.ready_timeout);
        tokio::pin!(timeout);
        let failed = loop {
            tokio::select! {
                passed = status.wait_for(|s| s.state == ProbeState::Passing) => {
                    if passed.is_ok() {
                        break None;
                    }
                    break Some(Abort::Failed("the readiness check of the new app process ended".to_string()));
                }
                st = &mut new.exit => {
                    let st = st.unwrap_or(LOST);
                    self.other_exited(&new, &st, "replacement");
                    return Err(Abort::Failed(format!(
                        "the new app process exited before it was ready (exit code {})",
                        st.exit_code()
                    )));
                }
                st = &mut old.exit => {
                    // The old one is gone: the ordinary restart path takes over.
                    let st = st.unwrap_or(LOST);
                    break Some(Abort::Outcome(Outcome::Exited(st)));
                }
                () = &mut timeout => break Some(Abort::Failed(format!(
                    "the new app process was not ready within restart.ready_timeout ({}): {}",
                    humantime::format_duration(self.core.cfg.restart.ready_timeout),
                    probe.status().last_failure.unwrap_or_else(|| "no check passed".into())
                ))),
                ev = self.core.next_event() => match ev {
                    Event::Signal(SignalEvent::Stop(sig)) => {
                        break Some(Abort::Outcome(Outcome::StopRequested(sig)));
                    }
                    other => {
                        if let Some(other) = self.unless_busy(other) {
                            self.on_event(other, Some(old.pid)).await;
                        }
                    }
                },
            }
        };
        match failed {
            None => Ok(((new, port, spec), probe)),
            Some(abort) => {
                drop(probe);
                self.stop_other(&mut new, &cfg.app, "replacement").await;
                Err(abort)
            }
        }
    }

    /// Wait until the listener settings retired by the switch finished their requests
    /// (each bounded by its `drain_timeout`). A stop signal meanwhile is returned (the old
    /// process is still stopped after the drain); a second one cuts the wait short.
    async fn drain_old(&mut self, old: &mut App) -> Option<Signal> {
        let serving = self.parts.proxy.serving_mut()?;
        let mut retired = serving.take_retired();
        let began = Instant::now();
        let mut stop = None;
        {
            let finished = retired.finished();
            tokio::pin!(finished);
            loop {
                tokio::select! {
                    drains = &mut finished => {
                        let finished: u64 = drains.iter().map(|d| d.finished).sum();
                        let cut: u64 = drains.iter().map(|d| d.cut).sum();
                        tracing::info!(event = "old_app_drained", pid = old.pid.as_raw(), finished, cut, elapsed_ms = began.elapsed().as_millis() as u64, "the old listener settings' requests are done");
                        break;
                    }
                    ev = self.core.next_event() => match ev {
                        Event::Signal(SignalEvent::Stop(sig)) if stop.is_none() => {
                            tracing::info!(event = "stopping", signal = %sig, "stop requested during a rolling restart; stopping once the old app process is drained");
                            stop = Some(sig);
                        }
                        Event::Signal(SignalEvent::Stop(sig)) => {
                            tracing::warn!(event = "stopping", signal = %sig, "second stop signal: the old app process is stopped now");
                            break;
                        }
                        other => {
                            if let Some(other) = self.unless_busy(other) {
                                let pid = self.machine.app_pid();
                                self.on_event(other, pid).await;
                            }
                        }
                    },
                }
            }
        }
        if let Some(serving) = self.parts.proxy.serving_mut() {
            serving.keep_retired(retired);
        }
        stop
    }

    /// Send the old process its stop signal (its app section's), wait `stop_timeout`, then
    /// SIGKILL. A stop signal meanwhile (or before: `stop`) is returned for the run loop; a
    /// second one SIGKILLs at once.
    async fn stop_old(
        &mut self,
        old: &mut App,
        cfg: &AppConfig,
        mut stop: Option<Signal>,
    ) -> Option<Signal> {
        let began = Instant::now();
        if let Err(e) = child::stop::signal_group(old.pid, cfg.stop_signal.0) {
            tracing::warn!(event = "signal_failed", signal = %cfg.stop_signal.0, error = %e, "cannot signal the old app process");
        }
        tracing::info!(event = "stop_signal_sent", signal = %cfg.stop_signal.0, pid = old.pid.as_raw(), timeout_ms = cfg.stop_timeout.as_millis() as u64, role = "old", "asked the old app process to stop");
        let deadline = sleep(cfg.stop_timeout);
        tokio::pin!(deadline);
        let status = loop {
            tokio::select! {
                st = &mut old.exit => break st.unwrap_or(LOST),
                () = &mut deadline => {
                    self.kill(old, "stop_timeout", began);
                    break (&mut old.exit).await.unwrap_or(LOST);
                }
                ev = self.core.next_event() => match ev {
                    Event::Signal(SignalEvent::Stop(sig)) if stop.is_none() => stop = Some(sig),
                    Event::Signal(SignalEvent::Stop(_)) => {
                        self.kill(old, "second_stop_signal", began);
                        break (&mut old.exit).await.unwrap_or(LOST);
                    }
                    other => {
                        if let Some(other) = self.unless_busy(other) {
                            let pid = self.machine.app_pid();
                            self.on_event(other, pid).await;
                        }
                    }
                },
            }
        };
        self.other_exited(old, &status, "old");
        stop
    }

    /// During a rolling restart another restart or an upgrade is refused (answered here);
    /// any other event is returned for [`Supervisor::on_event`].
    fn unless_busy(&self, ev: Event) -> Option<Event> {
        let Event::Control(req) = ev else {
            return Some(ev);
        };
        let error = "a rolling restart is under way; ask again once it is done".to_string();
        let reply = match &req.action {
            control::Action::Restart => control::Reply::Restart(control::RestartOutcome {
                ok: false,
                error: Some(error),
                pid: self.machine.app_pid().map(Pid::as_raw),
                restarts: self.machine.restarts(),
            }),
            control::Action::Upgrade { binary } => {
                control::Reply::Upgrade(control::UpgradeAccepted {
                    ok: false,
                    error: Some(error),
                    binary: binary.clone().unwrap_or_default(),
                    generation: self.core.upgrade.generation + 1,
                })
            }
            _ => return Some(Event::Control(req)),
        };
        let _ = req.reply.send(reply);
        None
    }

    /// Stop a process that is not (or no longer) the app: stop signal, `stop_timeout`, SIGKILL.
    /// Events meanwhile are queued for the run loop but a stop signal, which kills it at once.
    async fn stop_other(&mut self, proc: &mut App, cfg: &AppConfig, role: &'static str) {
        let began = Instant::now();
        let _ = child::stop::signal_group(proc.pid, cfg.stop_signal.0);
        tracing::info!(event = "stop_signal_sent", signal = %cfg.stop_signal.0, pid = proc.pid.as_raw(), role, "stopping the other app process");
        let status = match tokio::time::timeout(cfg.stop_timeout, &mut proc.exit).await {
            Ok(st) => st.unwrap_or(LOST),
            Err(_) => {
                self.kill(proc, "stop_timeout", began);
                (&mut proc.exit).await.unwrap_or(LOST)
            }
        };
        self.other_exited(proc, &status, role);
    }

    /// A process that is not the app exited: log it, and clear what it left in its group.
    /// Nothing else changes (the app, its probes and the proxy's gate are another process's).
    fn other_exited(&self, proc: &App, status: &ExitStatus, role: &'static str) {
        tracing::info!(
            event = "exited",
            pid = proc.pid.as_raw(),
            role,
            exit_code = status.exit_code(),
            code = status.code,
            signal = status.signal,
            ran_ms = proc.started.elapsed().as_millis() as u64,
            "app process exited"
        );
        if self.core.cfg.app.kill_group_on_exit && child::stop::group_alive(proc.pid) {
            let _ = nix::sys::signal::killpg(proc.pid, Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_goes_in_the_environment_and_the_command() {
        let mut spec = AppSpec {
            program: "./server-{port}".into(),
            args: vec!["--listen".into(), "127.0.0.1:{port}".into(), "x".into()],
            workdir: None,
            env: Default::default(),
            env_remove: Vec::new(),
            user: None,
            group: None,
        };
        give_port(&mut spec, "HTTP_PORT", 4123);
        assert_eq!(spec.program, "./server-4123");
        assert_eq!(spec.args, ["--listen", "127.0.0.1:4123", "x"]);
        assert_eq!(spec.env.get("HTTP_PORT").map(String::as_str), Some("4123"));
    }

    #[test]
    fn listeners_move_to_the_new_port_and_keep_their_host() {
        let ls = vec![
            tandem_proxy::parse_listener_spec("8080=127.0.0.1:3000").expect("spec"),
            tandem_proxy::parse_listener_spec("8081=[::1]:3000").expect("spec"),
        ];
        let moved = listeners_at(&ls, 4100);
        assert_eq!(moved[0].upstream, "127.0.0.1:4100");
        assert_eq!(moved[1].upstream, "[::1]:4100");
        assert_eq!(moved[0].listen, ls[0].listen);
    }

    #[test]
    fn a_restart_applies_the_app_section_and_listeners_only() {
        for k in [
            "app.env",
            "app.command",
            "app.stop_signal",
            "proxy.listeners",
        ] {
            assert!(applied_by_restart(k), "{k}");
        }
        for k in [
            "app.forward_signals",
            "logs.format",
            "admin.listen",
            "restart.mode",
        ] {
            assert!(!applied_by_restart(k), "{k}");
        }
    }
}
