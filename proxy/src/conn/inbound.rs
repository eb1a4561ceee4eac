//! The inbound proxy's entry points: [`Inbound::bind`] before the app starts, [`serve`] once
//! hooks are ready, [`Serving::reconfigure`] on a config reload, [`Serving::drain`] on stop.
//!
//! Invariant: every listener is validated and bound before any is served, so a bad config or
//! a port in use fails the start before the app is spawned; traffic that arrives before the
//! app is ready waits in the kernel's accept queue or the readiness gate, never fails fast.
//! A reconfigure keeps that order: everything new is checked, loaded and bound before any
//! running listener is touched, so a refused one changes nothing.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{CheckedListener, ListenerConfig, Protocol};
use crate::conn::drain::{drain, DrainReport, ListenerDrain};
use crate::conn::listener::{ConnSlot, Listener};
use crate::conn::{handshake, serve as conn, tcp};
use crate::edge::Edge;
use crate::error::FileError;
use crate::error::{ConfigError, ProxyError};
use crate::http::app_exits::{AppExits, InFlight};
use crate::obs::hooks::Hooks;

/// Listen backlog: connections that arrive while the app starts queue here.
const BACKLOG: u32 = 1024;

/// Namespace for binding the inbound listeners.
#[derive(Debug)]
pub struct Inbound;

/// Listeners bound but not yet serving. Connections queue in the backlog until [`serve`].
#[derive(Debug)]
pub struct BoundListeners {
    listeners: Vec<(CheckedListener, TcpListener, SocketAddr, Edge)>,
}

/// The running proxy. Dropping it does not stop it: call [`Serving::drain`].
#[derive(Debug)]
pub struct Serving {
    shutdown: CancellationToken,
    addrs: Vec<(String, SocketAddr)>,
    active: Vec<Active>,
    /// Listeners removed or replaced by [`Serving::reconfigure`], finishing their requests.
    retired: Vec<JoinHandle<AcceptEnd>>,
    readiness: watch::Receiver<bool>,
    hooks: Hooks,
    app_exits: AppExits,
}

/// One serving listener, as [`Serving`] holds it.
#[derive(Debug)]
struct Active {
    cfg: ListenerConfig,
    edge: Edge,
    /// The listener's own drain token (a child of the proxy's `shutdown`).
    stop: CancellationToken,
    /// Cancelled to make the accept loop give its socket back, for a replacement.
    handoff: CancellationToken,
    task: JoinHandle<AcceptEnd>,
    /// The address actually bound.
    addr: SocketAddr,
}

/// How an accept loop ended.
enum AcceptEnd {
    /// Stopped and drained (its socket closed).
    Drained(ListenerDrain),
    /// Asked for its socket: it stopped accepting and hands it over, undrained.
    HandedOff(TcpListener, Arc<Listener>),
}

impl std::fmt::Debug for AcceptEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AcceptEnd::Drained(d) => f.debug_tuple("Drained").field(d).finish(),
            AcceptEnd::HandedOff(s, _) => f.debug_tuple("HandedOff").field(s).finish(),
        }
    }
}

/// What [`Serving::reconfigure`] did, by listener name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconfigured {
    /// Bound and serving now.
    pub added: Vec<String>,
    /// No longer accepting; their requests in flight finish (within `drain_timeout`).
    pub removed: Vec<String>,
    /// Same socket, new settings for new connections; open ones finish on the old.
    pub changed: Vec<String>,
    /// Not touched.
    pub unchanged: Vec<String>,
}

// === impl Inbound ===

impl Inbound {
    /// Validates every listener, then binds each (SO_REUSEADDR, so a restarted tandem can
    /// rebind at once). Must run inside a tokio runtime.
    pub async fn bind(configs: &[ListenerConfig]) -> Result<BoundListeners, ProxyError> {
        Self::bind_inherited(configs, &mut |_| None).await
    }

    /// [`Inbound::bind`], but a listener for which `inherited` returns a socket serves that
    /// socket (already bound and listening: a tandem that exec'd its new binary hands its
    /// sockets over, so no connection is refused) instead of binding anew. `inherited` is
    /// asked once per listener, after every listener was validated and its files read.
    pub async fn bind_inherited(
        configs: &[ListenerConfig],
        inherited: &mut dyn FnMut(&ListenerConfig) -> Option<std::net::TcpListener>,
    ) -> Result<BoundListeners, ProxyError> {
        check_all(configs)?;
        // Certificates, keys, JWKS and secrets files: read before any port is bound.
        let mut edges = Vec::with_capacity(configs.len());
        for c in configs {
            edges.push(load_edge(c).await?);
        }
        let mut listeners = Vec::with_capacity(configs.len());
        for (c, edge) in configs.iter().zip(edges) {
            let (listener, addr) = match inherited(c) {
                Some(socket) => adopt_one(c, socket)?,
                None => bind_one(c)?,
            };
            let checked = CheckedListener {
                cfg: c.clone(),
                upstream: c.upstream_authority()?,
            };
            listeners.push((checked, listener, addr, edge));
        }
        Ok(BoundListeners { listeners })
    }
}

/// Every listener valid on its own, and no two with the same name.
fn check_all(configs: &[ListenerConfig]) -> Result<(), ProxyError> {
    let mut names = HashSet::new();
    for c in configs {
        c.validate()?;
        c.upstream_authority()?;
        if !names.insert(c.display_name()) {
            return Err(ConfigError::DuplicateName(c.display_name()).into());
        }
    }
    Ok(())
}

/// A listener's certificates, keys, JWKS and secrets, read (and JWKS URLs fetched once).
async fn load_edge(c: &ListenerConfig) -> Result<Edge, ProxyError> {
    let edge = Edge::load(c)?;
    edge.prefetch().await;
    Ok(edge)
}

/// Bind `c.listen` (SO_REUSEADDR) and listen.
fn bind_one(c: &ListenerConfig) -> Result<(TcpListener, SocketAddr), ProxyError> {
    let bind_err = |source| ProxyError::Bind {
        listener: c.display_name(),
        addr: c.listen,
        source,
    };
    let socket = if c.listen.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(bind_err)?;
    socket.set_reuseaddr(true).map_err(bind_err)?;
    socket.bind(c.listen).map_err(bind_err)?;
    let listener = socket.listen(BACKLOG).map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    Ok((listener, addr))
}

/// Serve a listening socket handed over by a previous image of tandem.
fn adopt_one(
    c: &ListenerConfig,
    socket: std::net::TcpListener,
) -> Result<(TcpListener, SocketAddr), ProxyError> {
    let bind_err = |source| ProxyError::Bind {
        listener: c.display_name(),
        addr: c.listen,
        source,
    };
    socket.set_nonblocking(true).map_err(bind_err)?;
    let listener = TcpListener::from_std(socket).map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    Ok((listener, addr))
}

// === impl BoundListeners ===

impl BoundListeners {
    /// Listener names and the addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|(c, _, a, _)| (c.cfg.display_name(), *a))
            .collect()
    }
}

/// Starts serving every bound listener. Requests wait for `readiness` to be true (up to each
/// listener's `hold_timeout`); cancelling `shutdown` (or calling [`Serving::drain`]) stops
/// accepting and drains.
pub fn serve(
    bound: BoundListeners,
    readiness: watch::Receiver<bool>,
    shutdown: CancellationToken,
    hooks: Hooks,
) -> Serving {
    let addrs = bound.local_addrs();
    let listeners = addrs.len();
    let mut serving = Serving {
        shutdown,
        addrs,
        active: Vec::with_capacity(listeners),
        retired: Vec::new(),
        readiness,
        hooks,
        app_exits: AppExits::new(),
    };
    for (checked, socket, _, edge) in bound.listeners {
        let active = serving.start(checked, socket, edge, listeners);
        serving.active.push(active);
    }
    serving
}

async fn accept_loop(
    l: Arc<Listener>,
    socket: TcpListener,
    handoff: CancellationToken,
) -> AcceptEnd {
    let mut backoff = AcceptBackoff::default();
    loop {
        tokio::select! {
            biased;
            _ = l.shutdown.cancelled() => break,
            _ = handoff.cancelled() => return AcceptEnd::HandedOff(socket, l),
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    backoff.recovered(&l);
                    // Past the cap: closed at once, so the fds stay free for the app's
                    // respawn and the admin port.
                    let Some(slot) = l.connection_slot() else {
                        tracing::debug!(listener = %l.route.name, %peer, "connection over limits.max_connections; closed");
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    spawn_connection(&l, stream, peer, slot);
                }
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: nothing to accept with until some
                    // connection closes; retrying at once would spin and flood the log.
                    let delay = backoff.failed(&l, &e);
                    tokio::select! {
                        _ = l.shutdown.cancelled() => break,
                        _ = handoff.cancelled() => return AcceptEnd::HandedOff(socket, l),
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
    drop(socket);
    AcceptEnd::Drained(drain(&l).await)
}

/// Serves one accepted connection in the listener's tracker; `slot` is held until it ends.
fn spawn_connection(l: &Arc<Listener>, stream: TcpStream, peer: SocketAddr, slot: ConnSlot) {
    let l2 = l.clone();
    match (l.route.cfg.protocol, &l.edge.tls) {
        (Protocol::Tcp, Some(t)) => {
            let t = t.clone();
            l.tasks.spawn(async move {
                let _slot = slot;
                if let Some(s) = handshake::handshake(&l2, &t, stream, peer).await {
                    tcp::serve(l2, s, peer).await;
                }
            })
        }
        (Protocol::Tcp, None) => l.tasks.spawn(async move {
            let _slot = slot;
            tcp::serve(l2, stream, peer).await;
        }),
        (Protocol::Http | Protocol::H2c, Some(t)) => {
            let t = t.clone();
            l.tasks.spawn(async move {
                let _slot = slot;
                handshake::serve(l2, t, stream, peer).await;
            })
        }
        (Protocol::Http | Protocol::H2c, None) => l.tasks.spawn(async move {
            let _slot = slot;
            let h2 = l2.route.cfg.protocol == Protocol::H2c;
            conn::serve(l2, stream, peer, None, h2).await;
        }),
    };
}

/// The pause after a failed `accept`: 10 ms, doubling to 1 s while failures go on; one
/// warning per episode, every failure counted.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// Failures in the current episode (0: none).
    failures: u32,
}

// === impl AcceptBackoff ===

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn failed(&mut self, l: &Listener, e: &std::io::Error) -> Duration {
        if let Some(m) = &l.route.metrics {
            m.accept_failures.inc();
        }
        if self.failures == 0 {
            tracing::warn!(event = "accept_failed", listener = %l.route.name, error = %e, "accept failed; backing off until it succeeds again");
        }
        self.failures = self.failures.saturating_add(1);
        Self::delay(self.failures)
    }

    fn recovered(&mut self, l: &Listener) {
        if self.failures > 0 {
            tracing::info!(event = "accept_recovered", listener = %l.route.name, failures = self.failures, "accept works again");
            self.failures = 0;
        }
    }

    /// The pause after the `n`th failure in a row (n >= 1).
    fn delay(n: u32) -> Duration {
        Self::FIRST
            .saturating_mul(1 << n.saturating_sub(1).min(7))
            .min(Self::MAX)
    }
}

// === impl Serving ===

impl Serving {
    /// Listener names and bound addresses.
    pub fn local_addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    /// Re-reads every listener's certificate, key, client CA and JWKS files now (wire it to
    /// SIGHUP). Files that changed and load are in force for new connections and requests at
    /// once; open connections keep what they were accepted with. Each file that fails to load
    /// keeps its old contents and is returned (and logged) naming listener and path.
    pub fn reload(&self) -> Vec<FileError> {
        self.active.iter().flat_map(|a| a.edge.reload()).collect()
    }

    /// Serve `configs` from now on, in place: a listener whose config is unchanged is not
    /// touched; one that changed keeps its socket (no connection refused) and new connections
    /// get the new settings while open ones finish on the old; a new one is bound; a removed
    /// one stops accepting and drains (within its `drain_timeout`), in the background.
    /// Listeners are matched by name, else by listen address. Everything new is checked,
    /// loaded and bound first: on `Err` nothing changed.
    pub async fn reconfigure(
        &mut self,
        configs: &[ListenerConfig],
    ) -> Result<Reconfigured, ProxyError> {
        check_all(configs)?;
        // Retired listeners that finished draining logged their report; keep only the rest.
        self.retired.retain(|t| !t.is_finished());
        // Which old listener each new config continues (same socket), if any.
        let mut taken = vec![false; self.active.len()];
        let mut matched: Vec<Option<usize>> = configs
            .iter()
            .map(|c| {
                let i = self
                    .active
                    .iter()
                    .position(|a| a.cfg.display_name() == c.display_name())?;
                taken[i] = true;
                Some(i)
            })
            .collect();
        for (c, m) in configs.iter().zip(matched.iter_mut()) {
            if m.is_none() && c.listen.port() != 0 {
                *m = self
                    .active
                    .iter()
                    .enumerate()
                    .position(|(i, a)| !taken[i] && a.cfg.listen == c.listen);
                if let Some(i) = *m {
                    taken[i] = true;
                }
            }
        }
        // A new listen address is a new socket: the old one is removed.
        for (c, m) in configs.iter().zip(matched.iter_mut()) {
            if let Some(i) = *m {
                if self.active[i].cfg.listen != c.listen {
                    taken[i] = false;
                    *m = None;
                }
            }
        }
        // Load and bind everything new before touching a running listener.
        enum Plan {
            Keep(usize),
            Replace(usize, Edge),
            Add(TcpListener, Edge),
        }
        let mut plans = Vec::with_capacity(configs.len());
        for (c, m) in configs.iter().zip(&matched) {
            plans.push(match *m {
                Some(i) if self.active[i].cfg == *c => Plan::Keep(i),
                Some(i) => Plan::Replace(i, load_edge(c).await?),
                None => {
                    let edge = load_edge(c).await?;
                    Plan::Add(bind_one(c)?.0, edge)
                }
            });
        }
        let mut report = Reconfigured::default();
        let mut old: Vec<Option<Active>> = self.active.drain(..).map(Some).collect();
        for (i, a) in old.iter_mut().enumerate() {
            if !taken[i] {
                let a = a.take().expect("each old listener is taken once");
                report.removed.push(a.cfg.display_name());
                a.stop.cancel();
                self.retired.push(a.task);
            }
        }
        let total = configs.len();
        for (c, plan) in configs.iter().zip(plans) {
            let checked = CheckedListener {
                cfg: c.clone(),
                upstream: c.upstream_authority()?,
            };
            let active = match plan {
                Plan::Keep(i) => {
                    report.unchanged.push(c.display_name());
                    old[i].take().expect("each old listener is kept once")
                }
                Plan::Replace(i, edge) => {
                    let a = old[i].take().expect("each old listener is replaced once");
                    a.handoff.cancel();
                    match a.task.await {
                        Ok(AcceptEnd::HandedOff(socket, prev)) => {
                            // The old settings' connections finish what they have, then close.
                            prev.shutdown.cancel();
                            self.retired.push(tokio::spawn(async move {
                                AcceptEnd::Drained(drain(&prev).await)
                            }));
                            report.changed.push(c.display_name());
                            self.start(checked, socket, edge, total)
                        }
                        // Stopped meanwhile (the proxy is draining): bind anew.
                        Ok(AcceptEnd::Drained(_)) | Err(_) => {
                            report.added.push(c.display_name());
                            self.start(checked, bind_one(c)?.0, edge, total)
                        }
                    }
                }
                Plan::Add(socket, edge) => {
                    report.added.push(c.display_name());
                    self.start(checked, socket, edge, total)
                }
            };
            self.active.push(active);
        }
        self.addrs = self
            .active
            .iter()
            .map(|a| (a.cfg.display_name(), a.addr))
            .collect();
        Ok(report)
    }

    /// Serve one listener on `socket`.
    fn start(
        &self,
        checked: CheckedListener,
        socket: TcpListener,
        edge: Edge,
        listeners: usize,
    ) -> Active {
        let cfg = checked.cfg.clone();
        let stop = self.shutdown.child_token();
        let handoff = CancellationToken::new();
        let addr = socket.local_addr().unwrap_or(cfg.listen);
        let l = Arc::new(Listener::new(
            checked,
            listeners,
            self.readiness.clone(),
            self.hooks.clone(),
            stop.clone(),
            edge.clone(),
            self.app_exits.clone(),
        ));
        l.edge.watch(&stop, l.route.metrics.as_ref());
        let task = tokio::spawn(accept_loop(l, socket, handoff.clone()));
        Active {
            cfg,
            edge,
            stop,
            handoff,
            task,
            addr,
        }
    }

    /// Takes the listeners [`Serving::reconfigure`] retired (removed, or replaced by new
    /// settings) and are still finishing their requests, to await them with
    /// [`Retired::finished`]. Give back what is left with [`Serving::keep_retired`] when not
    /// awaiting them to the end, so [`Serving::drain`] still waits for them.
    pub fn take_retired(&mut self) -> Retired {
        Retired(std::mem::take(&mut self.retired))
    }

    /// Puts back retired listeners taken with [`Serving::take_retired`] (those not yet
    /// finished), for [`Serving::drain`] to wait for.
    pub fn keep_retired(&mut self, retired: Retired) {
        self.retired.extend(retired.0);
    }

    /// The supervisor reaped the app: requests that were in flight to it count this exit
    /// against their replays (see `retry.max_replays_after_app_exit`). Returns them, for the
    /// exit log. Call it before the proxy's readiness turns false.
    pub fn app_exited(&self) -> Vec<InFlight> {
        self.app_exits.app_exited()
    }

    /// Stops accepting on every listener but keeps the sockets open and listening (new
    /// connections wait in the kernel's backlog, none is refused), lets the requests in flight
    /// finish within each listener's `drain_timeout` (cutting the rest), and returns the
    /// sockets by listener name with the drain's report: for a new image of tandem to serve
    /// them (see [`Inbound::bind_inherited`]).
    pub async fn hand_over(self) -> (Vec<(String, std::net::TcpListener)>, DrainReport) {
        let mut sockets = Vec::with_capacity(self.active.len());
        let mut drains = Vec::new();
        for a in self.active {
            a.handoff.cancel();
            match a.task.await {
                Ok(AcceptEnd::HandedOff(socket, prev)) => {
                    prev.shutdown.cancel();
                    drains.push(tokio::spawn(async move { drain(&prev).await }));
                    match socket.into_std() {
                        Ok(s) => sockets.push((a.cfg.display_name(), s)),
                        Err(e) => {
                            tracing::warn!(listener = %a.cfg.display_name(), error = %e, "cannot hand over a listening socket; the new image binds it again");
                        }
                    }
                }
                Ok(AcceptEnd::Drained(l)) => {
                    drains.push(tokio::spawn(async move { l }));
                }
                Err(e) => tracing::error!(error = %e, "listener task failed"),
            }
        }
        self.shutdown.cancel();
        let mut report = DrainReport::default();
        for task in drains {
            if let Ok(l) = task.await {
                report.listeners.push(l);
            }
        }
        for task in self.retired {
            if let Ok(AcceptEnd::Drained(l)) = task.await {
                report.listeners.push(l);
            }
        }
        (sockets, report)
    }

    /// Stops accepting on every listener, lets in-flight requests finish within each
    /// listener's `drain_timeout`, cuts the rest, and reports. Idempotent with cancelling
    /// the `shutdown` token given to [`serve`].
    pub async fn drain(self) -> DrainReport {
        self.shutdown.cancel();
        let mut report = DrainReport::default();
        let tasks = self.active.into_iter().map(|a| a.task).chain(self.retired);
        for task in tasks {
            match task.await {
                Ok(AcceptEnd::Drained(l)) => report.listeners.push(l),
                Ok(AcceptEnd::HandedOff(..)) => {}
                Err(e) => {
                    tracing::error!(error = %e, "listener task failed");
                }
            }
        }
        report
    }
}

/// Listeners retired by [`Serving::reconfigure`], taken out of the [`Serving`] to be awaited
/// (a rolling restart stops the old app only once they finished).
#[derive(Debug, Default)]
pub struct Retired(Vec<JoinHandle<AcceptEnd>>);

// === impl Retired ===

impl Retired {
    /// How many are still draining.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Resolves once every one has drained: its requests in flight finished, or were cut at
    /// its `drain_timeout`. Cancel-safe: a listener is removed the moment its drain is
    /// collected, so what is left can be given back with [`Serving::keep_retired`].
    pub async fn finished(&mut self) -> Vec<ListenerDrain> {
        let mut done = Vec::new();
        while let Some(task) = self.0.first_mut() {
            let end = task.await;
            self.0.remove(0);
            match end {
                Ok(AcceptEnd::Drained(l)) => done.push(l),
                Ok(AcceptEnd::HandedOff(..)) => {}
                Err(e) => tracing::error!(error = %e, "listener task failed"),
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_second() {
        let delays: Vec<u64> = (1..=9)
            .map(|n| AcceptBackoff::delay(n).as_millis() as u64)
            .collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(AcceptBackoff::delay(u32::MAX), AcceptBackoff::MAX);
    }
}
