//! The transitions: every change of [`Phase`] goes through [`Machine::enter`], which refuses
//! the illegal ones and tells everyone who watches (the status `watch`, the phase gauge,
//! sd_notify's STATUS=, and on the way into Stopping STOPPING=1 and EXTEND_TIMEOUT_USEC=).
//!
//! ```text
//! Starting ──▶ Running ◀──▶ Restarting
//!    │            │             │
//!    └────────────┴─────────────┴──▶ Stopping ──▶ Stopped
//! ```
//! (Starting ─▶ Restarting too: a first spawn that failed for want of resources.)
//! Entering the phase one is in does nothing, so a path that reaches Stopping twice (a stop
//! signal, then the end of the run) sends STOPPING=1 once. Besides the phase the machine keeps
//! what the transitions decide on: readiness (READY=1 once per tandem, the proxy's gate), and
//! restart pacing (policy, back-off, start limit) on tokio's clock. It does no I/O but
//! notifications, so it is tested on paused time with a recording [`Notify`].
use std::time::Duration;

use nix::unistd::Pid;
use rand::{rngs::StdRng, SeedableRng};
use tokio::{sync::watch, task::JoinHandle, time::Instant};

use crate::{
    child::ExitStatus,
    config::{Config, RestartConfig, RestartPolicy},
    health::notify::{Notifier, NotifyError},
    metrics::{ExitLabels, SupervisorMetrics},
    phase::{Phase, Status},
    restart::{Backoff, StartLimit},
};

/// Where sd_notify messages go: [`Notifier`] in tandem, a recorder in tests.
pub trait Notify: Send + Sync {
    /// `STATUS=...`.
    fn status(&self, status: &str) -> Result<(), NotifyError>;
    /// `READY=1`.
    fn ready(&self) -> Result<(), NotifyError>;
    /// `STOPPING=1`.
    fn stopping(&self) -> Result<(), NotifyError>;
    /// `EXTEND_TIMEOUT_USEC=...`.
    fn extend_timeout(&self, by: Duration) -> Result<(), NotifyError>;
    /// `WATCHDOG=1` pings while `healthy` is true (None: no watchdog asked for).
    fn spawn_watchdog(&self, healthy: watch::Receiver<bool>) -> Option<JoinHandle<()>>;
}

impl Notify for Notifier {
    fn status(&self, status: &str) -> Result<(), NotifyError> {
        Notifier::status(self, status)
    }
    fn ready(&self) -> Result<(), NotifyError> {
        Notifier::ready(self)
    }
    fn stopping(&self) -> Result<(), NotifyError> {
        Notifier::stopping(self)
    }
    fn extend_timeout(&self, by: Duration) -> Result<(), NotifyError> {
        Notifier::extend_timeout(self, by)
    }
    fn spawn_watchdog(&self, healthy: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
        Notifier::spawn_watchdog(self, healthy)
    }
}

/// Whether the lifecycle may go from `from` to `to` (a phase to itself is not a transition).
pub fn allowed(from: Phase, to: Phase) -> bool {
    use Phase::*;
    matches!(
        (from, to),
        (Starting, Running | Restarting | Stopping)
            | (Running, Restarting | Stopping)
            | (Restarting, Running | Stopping)
            | (Stopping, Stopped)
    )
}

/// The phase, readiness and restart pacing of one tandem run.
pub struct Machine {
    status: watch::Sender<Status>,
    metrics: SupervisorMetrics,
    notifier: Box<dyn Notify>,
    /// EXTEND_TIMEOUT_USEC on the way into Stopping: every bounded step of a stop, summed.
    stop_budget: Duration,
    /// The proxy's gate: true while the app can take requests. Unlike `/readyz` it stays
    /// true while draining, so requests still arriving are served, not held.
    proxy_ready: watch::Sender<bool>,
    /// The app's liveness, for the watchdog (pings only while healthy).
    healthy: watch::Receiver<bool>,
    /// READY=1 was sent (once per tandem, as systemd expects).
    notified_ready: bool,
    restarts: u32,
    pacing: Pacing,
}

/// When to start the app again: the policy, the back-off and the start limit.
struct Pacing {
    cfg: RestartConfig,
    backoff: Backoff,
    limit: StartLimit,
    rng: StdRng,
}

// === impl Machine ===

impl Machine {
    /// A machine in Starting (nothing announced yet: the first [`Machine::announce`] does).
    pub fn new(
        metrics: SupervisorMetrics,
        notifier: Box<dyn Notify>,
        stop_budget: Duration,
        restart: &RestartConfig,
        healthy: watch::Receiver<bool>,
    ) -> Self {
        Machine {
            status: watch::channel(Status::initial()).0,
            metrics,
            notifier,
            stop_budget,
            proxy_ready: watch::channel(false).0,
            healthy,
            notified_ready: false,
            restarts: 0,
            pacing: Pacing {
                cfg: restart.clone(),
                backoff: Backoff::new(restart),
                limit: StartLimit::new(restart),
                rng: StdRng::from_os_rng(),
            },
        }
    }

    /// Everything a stop may take, for EXTEND_TIMEOUT_USEC: the shutdown delay, the longest
    /// drain, the app's stop timeout, reading its pipes and flushing the logs, and forwarding
    /// the pass-through's queue.
    pub fn stop_budget(cfg: &Config) -> Duration {
        let drain = cfg
            .proxy
            .listeners
            .iter()
            .map(|l| l.drain_timeout)
            .max()
            .unwrap_or_default();
        // Saturating: each value is bounded at load, their sum need not fit a clock.
        cfg.shutdown
            .delay
            .saturating_add(drain)
            .saturating_add(cfg.app.stop_timeout)
            .saturating_add(cfg.logs.exit_timeout.saturating_mul(2))
            .saturating_add(cfg.telemetry.passthrough.shutdown_timeout)
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.status.borrow().phase
    }

    /// The status as `/status` sees it.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The proxy's gate (see the field).
    pub fn proxy_gate(&self) -> watch::Receiver<bool> {
        self.proxy_ready.subscribe()
    }

    /// The app's pid while it runs.
    pub fn app_pid(&self) -> Option<Pid> {
        self.status.borrow().app_pid.map(Pid::from_raw)
    }

    /// How many times the app was restarted.
    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    /// The proxy's bound listeners, for `/status`.
    pub fn set_listeners(&self, listeners: Vec<(String, String)>) {
        self.status.send_modify(|s| s.listeners = listeners);
    }

    /// Publish the last config reload's result (`/status` shows it).
    pub fn set_reload(&self, outcome: crate::phase::ReloadOutcome) {
        self.status.send_modify(|s| s.reload = Some(outcome));
    }

    /// Publish the first phase, Starting (the machine is born in it).
    pub fn announce(&mut self) {
        self.publish(Phase::Starting);
    }

    /// Go to `to`: false (and nothing sent) when already there or not allowed from here.
    pub fn enter(&mut self, to: Phase) -> bool {
        let from = self.phase();
        if from == to {
            return false;
        }
        if !allowed(from, to) {
            tracing::debug!(
                from = from.as_str(),
                to = to.as_str(),
                "phase change refused"
            );
            return false;
        }
        self.publish(to);
        true
    }

    fn publish(&mut self, phase: Phase) {
        if phase != Phase::Running {
            self.set_ready(false);
        }
        self.metrics.set_phase(phase);
        if let Err(e) = self.notifier.status(phase.as_str()) {
            tracing::debug!(error = %e, "cannot send STATUS=");
        }
        if phase == Phase::Stopping {
            // Not ready (orchestrators deregister, set above), and more time from systemd.
            let _ = self.notifier.stopping();
            let _ = self.notifier.extend_timeout(self.stop_budget);
        }
        let restarts = self.restarts;
        self.status.send_modify(|s| {
            s.phase = phase;
            s.restarts = restarts;
        });
    }

    fn set_ready(&self, ready: bool) {
        self.metrics.ready.set(i64::from(ready));
        self.status.send_if_modified(|s| {
            let changed = s.ready != ready;
            s.ready = ready;
            changed
        });
    }

    /// Readiness of the app changed (or may have): gate the proxy, `/readyz` and READY=1.
    pub fn readiness_changed(&mut self, ready: bool) {
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
                // The task ends with the health monitor (its sender).
                drop(self.notifier.spawn_watchdog(self.healthy.clone()));
            }
        } else {
            tracing::warn!(event = "not_ready", "the app is not ready");
        }
    }

    /// The last upgrade's result, for `/status`.
    pub fn set_upgrade(&self, outcome: crate::phase::UpgradeOutcome) {
        self.status.send_modify(|s| s.upgrade = Some(outcome));
    }

    /// Go on counting restarts where a previous image of tandem stopped (`tandem upgrade`).
    pub fn restore_restarts(&mut self, restarts: u32) {
        self.restarts = restarts;
        self.metrics.restarts.inc_by(u64::from(restarts));
        self.status.send_modify(|s| s.restarts = restarts);
    }

    /// The app a previous image of tandem ran, running since `since` (`tandem upgrade`).
    pub fn app_adopted(&mut self, pid: Pid, since: std::time::Instant) {
        self.app_started(pid);
        self.status.send_modify(|s| s.app_since = Some(since));
    }

    /// The app was spawned as `pid`.
    pub fn app_started(&mut self, pid: Pid) {
        self.metrics.starts.inc();
        self.metrics.app_up.set(1);
        self.status.send_modify(|s| {
            s.app_pid = Some(pid.as_raw());
            s.app_since = Some(std::time::Instant::now());
        });
    }

    /// The app exited: not ready, requests held for the next instance, its code published.
    pub fn app_exited(&mut self, status: &ExitStatus) {
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
            s.app_since = None;
            s.last_exit_code = Some(status.exit_code());
        });
    }

    /// Whether the app may be started now; false (and `start_limit_hit` logged) when it was
    /// started `start_limit_burst` times within `start_limit_interval`.
    pub fn may_start(&mut self) -> bool {
        if self.pacing.limit.try_start(Instant::now()) {
            return true;
        }
        tracing::error!(
            event = "start_limit_hit",
            burst = self.pacing.cfg.start_limit_burst,
            interval = %humantime::format_duration(self.pacing.cfg.start_limit_interval),
            "the app was started too often; giving up so the orchestrator can take over"
        );
        false
    }

    /// Whether `restart.policy` restarts an app that ended with `status`.
    pub fn should_restart(&self, status: &ExitStatus) -> bool {
        match self.pacing.cfg.policy {
            RestartPolicy::Never => false,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Always => true,
        }
    }

    /// Whether a failed start (no fds, processes or memory) may be tried again.
    pub fn retries_failed_starts(&self) -> bool {
        self.pacing.cfg.policy != RestartPolicy::Never
    }

    /// The back-off before the next start; a run that lasted `restart.reset_after` (`ran`)
    /// starts the back-off over.
    pub fn restart_delay(&mut self, ran: Option<Duration>) -> Duration {
        if ran.is_some_and(|ran| ran >= self.pacing.cfg.reset_after) {
            self.pacing.backoff.reset();
        }
        self.pacing.backoff.next_delay(&mut self.pacing.rng)
    }

    /// The app is about to be started again.
    pub fn count_restart(&mut self) {
        self.restarts += 1;
        self.metrics.restarts.inc();
    }

    /// A restart that happened without a phase change (a rolling restart): counted, and the
    /// count published at once.
    pub fn count_restart_in_place(&mut self) {
        self.count_restart();
        let restarts = self.restarts;
        self.status.send_modify(|s| s.restarts = restarts);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records every message as it would go on the wire.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Recorder {
        fn push(&self, m: String) -> Result<(), NotifyError> {
            self.0.lock().unwrap().push(m);
            Ok(())
        }
        fn count(&self, m: &str) -> usize {
            self.0.lock().unwrap().iter().filter(|x| *x == m).count()
        }
        fn all(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    impl Notify for Recorder {
        fn status(&self, status: &str) -> Result<(), NotifyError> {
            self.push(format!("STATUS={status}"))
        }
        fn ready(&self) -> Result<(), NotifyError> {
            self.push("READY=1".into())
        }
        fn stopping(&self) -> Result<(), NotifyError> {
            self.push("STOPPING=1".into())
        }
        fn extend_timeout(&self, by: Duration) -> Result<(), NotifyError> {
            self.push(format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()))
        }
        fn spawn_watchdog(&self, _: watch::Receiver<bool>) -> Option<JoinHandle<()>> {
            None
        }
    }

    fn restart_cfg(policy: RestartPolicy) -> RestartConfig {
        RestartConfig {
            policy,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            multiplier: 2.0,
            jitter: 0.0,
            reset_after: Duration::from_secs(10),
            start_limit_burst: 3,
            start_limit_interval: Duration::from_secs(10),
            ..RestartConfig::default()
        }
    }

    fn machine(policy: RestartPolicy) -> (Machine, Recorder) {
        let rec = Recorder::default();
        let (_, healthy) = watch::channel(true);
        let mut m = Machine::new(
            SupervisorMetrics::default(),
            Box::new(rec.clone()),
            Duration::from_secs(3),
            &restart_cfg(policy),
            healthy,
        );
        m.announce();
        (m, rec)
    }

    fn exited(code: i32) -> ExitStatus {
        ExitStatus {
            code: Some(code),
            signal: None,
            core_dumped: false,
        }
    }

    /// The end of every run, as `lifecycle::run` does it.
    fn finish(m: &mut Machine) {
        m.enter(Phase::Stopping);
        assert!(m.enter(Phase::Stopped));
    }

    fn assert_stopped_once(rec: &Recorder) {
        assert_eq!(rec.count("STOPPING=1"), 1, "{:?}", rec.all());
        assert_eq!(rec.count("EXTEND_TIMEOUT_USEC=3000000"), 1);
        assert_eq!(rec.count("STATUS=stopping"), 1);
        let all = rec.all();
        let stopping = all.iter().position(|m| m == "STOPPING=1").unwrap();
        let stopped = all.iter().position(|m| m == "STATUS=stopped").unwrap();
        assert!(stopping < stopped, "{all:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn stop_signal_sends_stopping_once() {
        let (mut m, rec) = machine(RestartPolicy::Always);
        assert!(m.may_start());
        m.app_started(Pid::from_raw(42));
        assert!(m.enter(Phase::Running));
        m.readiness_changed(true);
        // The stop sequence enters Stopping; the app's exit and the end of the run follow.
        assert!(m.enter(Phase::Stopping));
        assert_eq!(m.app_pid(), Some(Pid::from_raw(42)), "the app still runs");
        m.app_exited(&exited(0));
        finish(&mut m);
        assert_stopped_once(&rec);
        assert_eq!(
            rec.all()[..3],
            ["STATUS=starting", "STATUS=running", "READY=1"]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn app_exit_without_restart_sends_stopping_once() {
        let (mut m, rec) = machine(RestartPolicy::OnFailure);
        assert!(m.may_start());
        m.app_started(Pid::from_raw(42));
        m.enter(Phase::Running);
        m.app_exited(&exited(0));
        assert!(!m.should_restart(&exited(0)));
        finish(&mut m);
        assert_stopped_once(&rec);
        assert_eq!(m.status().borrow().last_exit_code, Some(0));
    }

    #[tokio::test(start_paused = true)]
    async fn liveness_failure_with_restart_never_sends_stopping_once() {
        let (mut m, rec) = machine(RestartPolicy::Never);
        assert!(m.may_start());
        m.app_started(Pid::from_raw(42));
        m.enter(Phase::Running);
        m.readiness_changed(true);
        // Liveness failed: not ready, the app is stopped (SIGTERM, then SIGKILL: 137).
        m.readiness_changed(false);
        m.app_exited(&exited(137));
        assert!(!m.should_restart(&exited(137)));
        finish(&mut m);
        assert_stopped_once(&rec);
        assert_eq!(rec.count("READY=1"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn start_limit_hit_sends_stopping_once() {
        let (mut m, rec) = machine(RestartPolicy::Always);
        let mut delays = Vec::new();
        while m.may_start() {
            m.app_started(Pid::from_raw(42));
            m.enter(Phase::Running);
            tokio::time::advance(Duration::from_millis(50)).await;
            m.app_exited(&exited(1));
            assert!(m.should_restart(&exited(1)));
            let delay = m.restart_delay(Some(Duration::from_millis(50)));
            assert!(m.enter(Phase::Restarting));
            tokio::time::advance(delay).await;
            delays.push(delay.as_millis());
            m.count_restart();
        }
        // Three starts within the 10 s window, then the limit.
        assert_eq!(delays, [100, 200, 400]);
        assert_eq!(m.restarts(), 3);
        finish(&mut m);
        assert_stopped_once(&rec);
        assert_eq!(rec.count("STATUS=restarting"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_while_restarting_then_end_of_run_sends_stopping_once() {
        let (mut m, rec) = machine(RestartPolicy::Always);
        m.app_started(Pid::from_raw(42));
        m.enter(Phase::Running);
        m.app_exited(&exited(1));
        m.enter(Phase::Restarting);
        // The stop signal during the back-off enters Stopping; the end of the run again.
        assert!(m.enter(Phase::Stopping));
        finish(&mut m);
        assert_stopped_once(&rec);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_start_stops_from_starting() {
        let (mut m, rec) = machine(RestartPolicy::Always);
        finish(&mut m);
        assert_eq!(
            rec.all(),
            [
                "STATUS=starting",
                "STATUS=stopping",
                "STOPPING=1",
                "EXTEND_TIMEOUT_USEC=3000000",
                "STATUS=stopped"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn illegal_transitions_are_refused() {
        let (mut m, rec) = machine(RestartPolicy::Always);
        assert!(!m.enter(Phase::Stopped), "Stopped only after Stopping");
        assert!(!m.enter(Phase::Starting), "already there");
        assert!(m.enter(Phase::Running));
        assert!(!m.enter(Phase::Starting));
        assert!(m.enter(Phase::Stopping));
        assert!(!m.enter(Phase::Running), "no way back from Stopping");
        assert!(!m.enter(Phase::Restarting));
        assert!(!m.enter(Phase::Stopping), "already there");
        assert!(m.enter(Phase::Stopped));
        for p in Phase::ALL {
            assert!(!m.enter(p), "nothing after Stopped: {p:?}");
        }
        assert_eq!(m.phase(), Phase::Stopped);
        assert_eq!(
            rec.all()
                .iter()
                .filter(|m| m.starts_with("STATUS="))
                .count(),
            4
        );
    }

    #[tokio::test(start_paused = true)]
    async fn ready_once_per_tandem_and_never_outside_running() {
        let (mut m, rec) = machine(RestartPolicy::Always);
        let gate = m.proxy_gate();
        m.enter(Phase::Running);
        m.readiness_changed(true);
        assert!(m.status().borrow().ready && *gate.borrow());
        m.app_exited(&exited(1));
        assert!(!m.status().borrow().ready && !*gate.borrow());
        m.enter(Phase::Restarting);
        m.enter(Phase::Running);
        m.readiness_changed(true);
        // Stopping: /readyz says no at once, the proxy's gate stays open for the drain.
        m.enter(Phase::Stopping);
        assert!(!m.status().borrow().ready);
        assert!(*gate.borrow());
        assert_eq!(rec.count("READY=1"), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_grows_caps_and_resets_after_a_long_run() {
        let (mut m, _) = machine(RestartPolicy::Always);
        let delays: Vec<u128> = (0..6)
            .map(|_| m.restart_delay(Some(Duration::from_secs(1))).as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(
            m.restart_delay(Some(Duration::from_secs(10))).as_millis(),
            100
        );
        // A failed start (no run) keeps growing it.
        assert_eq!(m.restart_delay(None).as_millis(), 200);
    }

    #[tokio::test(start_paused = true)]
    async fn start_limit_window_slides_on_tokio_time() {
        let (mut m, _) = machine(RestartPolicy::Always);
        for _ in 0..3 {
            assert!(m.may_start());
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(!m.may_start(), "fourth start within 10 s");
        // The first start leaves the window 10 s after it was made.
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(m.may_start());
    }
}
