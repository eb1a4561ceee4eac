//! Health of the supervised app: readiness and liveness probes ([`probe`]), combined into the
//! two signals the rest of tandem consumes, and the sd_notify side ([`notify`]).
//!
//! Invariants: `ready` is true only while the current app instance's readiness probe is
//! passing, or, with no readiness probe, from the moment the app is spawned; it is false
//! between instances. (With proxy listeners and no readiness probe the lifecycle passes the
//! implicit one, [`probe::Probe::implicit`]: ready once the upstreams accept connections.) `healthy` is false only while the current instance's liveness probe is
//! failing, or, with no liveness probe, its readiness probe. Probes belong to one app instance: [`HealthMonitor::app_started`] starts fresh
//! ones and [`HealthMonitor::app_stopped`] ends them, while the two watch channels live as long
//! as the monitor, so the proxy and the watchdog subscribe once.

pub mod grpc;
pub mod notify;
pub mod probe;

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::probe::{
    ExitWatcher, Probe, ProbeConfig, ProbeConfigError, ProbeHandle, ProbeState, ProbeStatus,
};

/// The `[health]` config section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Gates traffic and `READY=1`. None: ready once every proxy upstream accepts a TCP
    /// connection (the implicit probe), or, with no proxy listener, as soon as it is spawned.
    #[serde(default)]
    pub readiness: Option<ProbeConfig>,
    /// Failing means the app is stuck: restart it, stop the watchdog. None: never checked.
    #[serde(default)]
    pub liveness: Option<ProbeConfig>,
}

/// A `[health]` section that cannot be used; names the probe.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("health.{probe}: {source}")]
pub struct HealthConfigError {
    /// `readiness` or `liveness`.
    pub probe: &'static str,
    /// What is wrong with it.
    #[source]
    pub source: ProbeConfigError,
}

/// Validated health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthChecks {
    /// See [`HealthConfig::readiness`].
    pub readiness: Option<Probe>,
    /// See [`HealthConfig::liveness`].
    pub liveness: Option<Probe>,
}

// === impl HealthConfig ===

impl HealthConfig {
    /// Validates both probes.
    pub fn validate(&self) -> Result<HealthChecks, HealthConfigError> {
        let check = |probe: &'static str, c: &Option<ProbeConfig>| {
            c.as_ref()
                .map(|c| {
                    c.validate()
                        .map_err(|source| HealthConfigError { probe, source })
                })
                .transpose()
        };
        Ok(HealthChecks {
            readiness: check("readiness", &self.readiness)?,
            liveness: check("liveness", &self.liveness)?,
        })
    }
}

/// Runs the probes of the current app instance and publishes `ready` and `healthy`.
pub struct HealthMonitor {
    checks: HealthChecks,
    exits: Arc<dyn ExitWatcher>,
    ready: Arc<watch::Sender<bool>>,
    healthy: Arc<watch::Sender<bool>>,
    instance: Option<Instance>,
    /// Bumped each time probes are started: a liveness future taken before is stale.
    generation: u64,
}

/// The probes of one app instance and the task that folds them into `ready`/`healthy`.
struct Instance {
    readiness: Option<ProbeHandle>,
    liveness: Option<ProbeHandle>,
    combiner: JoinHandle<()>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.combiner.abort();
    }
}

// === impl HealthMonitor ===

impl HealthMonitor {
    /// A monitor with no app yet: not ready, healthy. `exits` is how exec probes learn their
    /// command's exit (tandem's reaper; see [`ExitWatcher`]).
    pub fn new(checks: HealthChecks, exits: Arc<dyn ExitWatcher>) -> Self {
        HealthMonitor {
            checks,
            exits,
            ready: Arc::new(watch::channel(false).0),
            healthy: Arc::new(watch::channel(true).0),
            instance: None,
            generation: 0,
        }
    }

    /// Which set of probes runs now (see [`HealthMonitor::replace_checks`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True while the app may take traffic (see the module invariants).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// False while the current instance's liveness probe (else readiness probe) is failing;
    /// feeds the sd_notify watchdog.
    pub fn healthy(&self) -> watch::Receiver<bool> {
        self.healthy.subscribe()
    }

    /// Starts fresh probes for a newly spawned app instance (ending any previous ones). Must
    /// be called from within a tokio runtime.
    pub fn app_started(&mut self) {
        self.start_probes(false, false);
    }

    /// Starts probes for an app a previous image of tandem ran (`tandem upgrade`): it has
    /// started already, so the probes skip their initial delay and check at once.
    pub fn app_adopted(&mut self) {
        self.start_probes(true, false);
    }

    /// A config reload changed the probes: the running instance's probes are replaced at once.
    /// `ready` keeps its value until the new readiness probe decides (no not-ready blip). The
    /// liveness future from [`HealthMonitor::liveness_failed`] must be taken again. Returns
    /// whether an instance's probes were replaced.
    pub fn replace_checks(&mut self, checks: HealthChecks) -> bool {
        self.checks = checks;
        if self.instance.is_none() {
            return false;
        }
        self.start_probes(true, true);
        true
    }

    fn start_probes(&mut self, adopted: bool, carry: bool) {
        self.generation += 1;
        if !carry {
            self.app_stopped();
        }
        let start = |name, p: &Option<Probe>| {
            p.clone().map(|mut p| {
                if adopted {
                    p.initial_delay = std::time::Duration::ZERO;
                    p.fast_start = true;
                }
                probe::spawn(name, p, Arc::clone(&self.exits))
            })
        };
        let readiness = start("readiness", &self.checks.readiness);
        let liveness = start("liveness", &self.checks.liveness);
        let r = readiness.as_ref().map(ProbeHandle::subscribe);
        let l = liveness.as_ref().map(ProbeHandle::subscribe);
        // Set before returning, so "no readiness probe" is ready the moment spawn returns.
        publish(&self.ready, &self.healthy, r.as_ref(), l.as_ref(), carry);
        let combiner = tokio::spawn(combine(
            r,
            l,
            Arc::clone(&self.ready),
            Arc::clone(&self.healthy),
            carry,
        ));
        self.instance = Some(Instance {
            readiness,
            liveness,
            combiner,
        });
    }

    /// A rolling restart's readiness check of a second app process listening on port `to`
    /// (the current one listens on `from`): the readiness probe aimed at `to` (see
    /// [`Probe::retarget`]); a TCP connect to `host:to` when there is none or it is an exec
    /// probe (which cannot be told which process to check). Runs until dropped or handed to
    /// [`HealthMonitor::app_replaced`].
    pub fn probe_replacement(&self, host: &str, from: u16, to: u16) -> ProbeHandle {
        let probe = match &self.checks.readiness {
            Some(p) if !matches!(p.check, probe::Check::Exec { .. }) => p.retarget(from, to),
            other => {
                let mut p = Probe::tcp(host, to);
                if let Some(o) = other {
                    p.interval = o.interval;
                    p.timeout = o.timeout;
                }
                p
            }
        };
        probe::spawn("readiness", probe, Arc::clone(&self.exits))
    }

    /// A rolling restart's switch: the app process on port `to` (whose readiness probe,
    /// from [`HealthMonitor::probe_replacement`], has passed) is the current instance from now
    /// on; the probes aim at `to` where they aimed at `from`, liveness starts fresh. `ready`
    /// stays true throughout (the proxy never holds a request for the switch).
    pub fn app_replaced(&mut self, from: u16, to: u16, readiness: ProbeHandle) {
        self.checks.readiness = self.checks.readiness.as_ref().map(|p| p.retarget(from, to));
        self.checks.liveness = self.checks.liveness.as_ref().map(|p| p.retarget(from, to));
        let liveness = self
            .checks
            .liveness
            .clone()
            .map(|p| probe::spawn("liveness", p, Arc::clone(&self.exits)));
        let readiness = Some(readiness);
        let r = readiness.as_ref().map(ProbeHandle::subscribe);
        let l = liveness.as_ref().map(ProbeHandle::subscribe);
        self.generation += 1;
        publish(&self.ready, &self.healthy, r.as_ref(), l.as_ref(), false);
        let combiner = tokio::spawn(combine(
            r,
            l,
            Arc::clone(&self.ready),
            Arc::clone(&self.healthy),
            false,
        ));
        // The old instance's probes end only now: nothing in between said "not ready".
        self.instance = Some(Instance {
            readiness,
            liveness,
            combiner,
        });
    }

    /// Ends the current instance's probes: not ready, and healthy (no probe is failing).
    pub fn app_stopped(&mut self) {
        self.instance = None;
        self.ready.send_if_modified(|r| std::mem::replace(r, false));
        self.healthy
            .send_if_modified(|h| !std::mem::replace(h, true));
    }

    /// The latest status of the current instance's readiness probe, if any.
    pub fn readiness_status(&self) -> Option<ProbeStatus> {
        self.instance
            .as_ref()?
            .readiness
            .as_ref()
            .map(ProbeHandle::status)
    }

    /// The latest status of the current instance's liveness probe, if any.
    pub fn liveness_status(&self) -> Option<ProbeStatus> {
        self.instance
            .as_ref()?
            .liveness
            .as_ref()
            .map(ProbeHandle::status)
    }

    /// Resolves when the current instance's liveness probe turns failing (the lifecycle's cue
    /// to restart the app); never resolves without a liveness probe or once the instance has
    /// stopped. Take it again after each [`HealthMonitor::app_started`].
    pub fn liveness_failed(&self) -> impl Future<Output = ProbeStatus> + Send + 'static {
        let rx = self
            .instance
            .as_ref()
            .and_then(|i| i.liveness.as_ref())
            .map(ProbeHandle::subscribe);
        async move {
            if let Some(mut rx) = rx {
                if let Ok(status) = rx.wait_for(|s| s.state == ProbeState::Failing).await {
                    return status.clone();
                }
            }
            std::future::pending().await
        }
    }
}

/// Recomputes `ready` and `healthy` from the probes' states; wakes receivers only on change.
fn publish(
    ready: &watch::Sender<bool>,
    healthy: &watch::Sender<bool>,
    readiness: Option<&watch::Receiver<ProbeStatus>>,
    liveness: Option<&watch::Receiver<ProbeStatus>>,
    carry: bool,
) {
    let state = |rx: Option<&watch::Receiver<ProbeStatus>>| rx.map(|rx| rx.borrow().state);
    let r = state(readiness);
    let l = state(liveness);
    let is_ready = match r {
        None | Some(ProbeState::Passing) => true,
        // Probes replaced by a reload: the app is the same, so it stays as it was until the
        // new probe decides.
        Some(ProbeState::Pending) if carry => *ready.borrow(),
        Some(_) => false,
    };
    // Liveness decides when there is one: a readiness failure (an overloaded app) must not get
    // the unit killed. Without one, a failing readiness probe is the only sign of a hung app.
    let is_healthy = l.or(r) != Some(ProbeState::Failing);
    ready.send_if_modified(|v| std::mem::replace(v, is_ready) != is_ready);
    healthy.send_if_modified(|v| std::mem::replace(v, is_healthy) != is_healthy);
}

async fn combine(
    mut readiness: Option<watch::Receiver<ProbeStatus>>,
    mut liveness: Option<watch::Receiver<ProbeStatus>>,
    ready: Arc<watch::Sender<bool>>,
    healthy: Arc<watch::Sender<bool>>,
    carry: bool,
) {
    async fn changed(rx: &mut Option<watch::Receiver<ProbeStatus>>) -> bool {
        match rx {
            Some(rx) => rx.changed().await.is_ok(),
            None => std::future::pending().await,
        }
    }
    loop {
        publish(
            &ready,
            &healthy,
            readiness.as_ref(),
            liveness.as_ref(),
            carry,
        );
        let alive = tokio::select! {
            alive = changed(&mut readiness) => alive,
            alive = changed(&mut liveness) => alive,
        };
        if !alive {
            return; // a probe task ended: the instance is being torn down
        }
    }
}

#[cfg(test)]
mod tests {
    use super::probe::{ProbeKind, TargetSpec, WaitPid};
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;
    use tokio::time;

    fn tcp_probe(port: u16) -> ProbeConfig {
        ProbeConfig {
            kind: ProbeKind::Tcp,
            target: TargetSpec::Line(format!("127.0.0.1:{port}")),
            interval: Duration::from_millis(20),
            timeout: Duration::from_secs(2),
            success_threshold: 1,
            failure_threshold: 1,
            initial_delay: Duration::ZERO,
        }
    }

    #[test]
    fn config_errors_name_the_probe() {
        let cfg: HealthConfig =
            toml::from_str("[readiness]\nkind = \"tcp\"\ntarget = \"127.0.0.1\"\n")
                .expect("parses");
        let err = cfg.validate().expect_err("no port");
        assert_eq!(err.probe, "readiness");
        assert!(err.to_string().starts_with("health.readiness: "), "{err}");
        assert!(toml::from_str::<HealthConfig>("[startup]\n").is_err());
    }

    #[test]
    fn the_shipped_systemd_example_has_valid_probes() {
        let file: toml::Table = toml::from_str(include_str!("../../../systemd/legacy-app.toml"))
            .expect("systemd/legacy-app.toml is TOML");
        let health: HealthConfig = file
            .get("health")
            .cloned()
            .expect("the example has a [health] section")
            .try_into()
            .expect("[health] matches HealthConfig");
        let checks = health.validate().expect("valid probes");
        assert!(checks.readiness.is_some() && checks.liveness.is_some());
    }

    #[tokio::test]
    async fn no_readiness_probe_means_ready_at_spawn() {
        let mut m = HealthMonitor::new(
            HealthConfig::default().validate().expect("empty"),
            Arc::new(WaitPid),
        );
        let ready = m.ready();
        assert!(!*ready.borrow());
        m.app_started();
        assert!(*ready.borrow());
        m.app_stopped();
        assert!(!*ready.borrow());
    }

    #[tokio::test]
    async fn readiness_gates_ready_and_failing_clears_healthy() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let checks = HealthConfig {
            readiness: Some(tcp_probe(port)),
            liveness: None,
        }
        .validate()
        .expect("valid");
        let mut m = HealthMonitor::new(checks, Arc::new(WaitPid));
        let mut ready = m.ready();
        let mut healthy = m.healthy();
        m.app_started();
        assert!(!*ready.borrow(), "not ready before the probe passes");
        let bound = Duration::from_secs(10);
        time::timeout(bound, ready.wait_for(|r| *r))
            .await
            .expect("ready within 10s")
            .expect("monitor alive");
        assert!(*healthy.borrow());
        drop(listener);
        time::timeout(bound, healthy.wait_for(|h| !*h))
            .await
            .expect("unhealthy within 10s")
            .expect("monitor alive");
        assert!(!*ready.borrow());
        m.app_stopped();
        assert!(*healthy.borrow(), "between instances nothing is failing");
    }

    #[tokio::test]
    async fn with_a_liveness_probe_readiness_failures_do_not_clear_healthy() {
        let live = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let live_port = live.local_addr().expect("addr").port();
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let closed_port = closed.local_addr().expect("addr").port();
        drop(closed);
        let checks = HealthConfig {
            readiness: Some(tcp_probe(closed_port)),
            liveness: Some(tcp_probe(live_port)),
        }
        .validate()
        .expect("valid");
        let mut m = HealthMonitor::new(checks, Arc::new(WaitPid));
        m.app_started();
        let bound = Duration::from_secs(10);
        let until_both = async {
            loop {
                let r = m.readiness_status().map(|s| s.state);
                let l = m.liveness_status().map(|s| s.state);
                if r == Some(ProbeState::Failing) && l == Some(ProbeState::Passing) {
                    return;
                }
                time::sleep(Duration::from_millis(10)).await;
            }
        };
        time::timeout(bound, until_both)
            .await
            .expect("readiness failing and liveness passing within 10s");
        assert!(!*m.ready().borrow(), "not ready");
        assert!(
            *m.healthy().borrow(),
            "alive, so the watchdog keeps pinging"
        );
    }

    #[tokio::test]
    async fn liveness_failed_resolves_when_liveness_fails() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let checks = HealthConfig {
            readiness: None,
            liveness: Some(tcp_probe(port)),
        }
        .validate()
        .expect("valid");
        let mut m = HealthMonitor::new(checks, Arc::new(WaitPid));
        m.app_started();
        let failed = m.liveness_failed();
        drop(listener);
        let status = time::timeout(Duration::from_secs(10), failed)
            .await
            .expect("liveness fails within 10s");
        assert_eq!(status.state, ProbeState::Failing);
        assert!(!*m.healthy().borrow());
    }
}
