//! The inbound proxy's entry points: [`Inbound::bind`] before the app starts, [`serve`] once
//! hooks are ready, [`Serving::drain`] on stop.
//!
//! Invariant: every listener is validated and bound before any is served, so a bad config or
//! a port in use fails the start before the app is spawned; traffic that arrives before the
//! app is ready waits in the kernel's accept queue or the readiness gate, never fails fast.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app_exits::{AppExits, InFlight};
use crate::config::{ListenerConfig, Protocol};
use crate::drain::{drain, DrainReport, ListenerDrain};
use crate::edge::Edge;
use crate::error::FileError;
use crate::error::{ConfigError, ProxyError};
use crate::listener::{Hooks, Listener};
use crate::{conn, tcp, tls};

/// Listen backlog: connections that arrive while the app starts queue here.
const BACKLOG: u32 = 1024;

/// Namespace for binding the inbound listeners.
#[derive(Debug)]
pub struct Inbound;

/// Listeners bound but not yet serving. Connections queue in the backlog until [`serve`].
#[derive(Debug)]
pub struct BoundListeners {
    listeners: Vec<(ListenerConfig, TcpListener, SocketAddr, Edge)>,
}

/// The running proxy. Dropping it does not stop it: call [`Serving::drain`].
#[derive(Debug)]
pub struct Serving {
    shutdown: CancellationToken,
    addrs: Vec<(String, SocketAddr)>,
    tasks: Vec<JoinHandle<ListenerDrain>>,
    edges: Vec<Edge>,
    app_exits: AppExits,
}

// === impl Inbound ===

impl Inbound {
    /// Validates every listener, then binds each (SO_REUSEADDR, so a restarted tandem can
    /// rebind at once). Must run inside a tokio runtime.
    pub async fn bind(configs: &[ListenerConfig]) -> Result<BoundListeners, ProxyError> {
        let mut names = HashSet::new();
        for c in configs {
            c.validate()?;
            if !names.insert(c.display_name()) {
                return Err(ConfigError::DuplicateName(c.display_name()).into());
            }
        }
        // Certificates, keys, JWKS and secrets files: read before any port is bound.
        let mut edges = Vec::with_capacity(configs.len());
        for c in configs {
            edges.push(Edge::load(c)?);
        }
        for e in &edges {
            e.prefetch().await;
        }
        let mut listeners = Vec::with_capacity(configs.len());
        for (c, edge) in configs.iter().zip(edges) {
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
            listeners.push((c.clone(), listener, addr, edge));
        }
        Ok(BoundListeners { listeners })
    }
}

// === impl BoundListeners ===

impl BoundListeners {
    /// Listener names and the addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .iter()
            .map(|(c, _, a, _)| (c.display_name(), *a))
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
    let mut edges = Vec::new();
    let app_exits = AppExits::new();
    let tasks = bound
        .listeners
        .into_iter()
        .map(|(cfg, socket, _, edge)| {
            edges.push(edge.clone());
            let l = Arc::new(Listener::new(
                cfg,
                readiness.clone(),
                hooks.clone(),
                shutdown.child_token(),
                edge,
                app_exits.clone(),
            ));
            l.edge.watch(&shutdown, l.metrics.as_ref());
            tokio::spawn(accept_loop(l, socket))
        })
        .collect();
    Serving {
        shutdown,
        addrs,
        tasks,
        edges,
        app_exits,
    }
}

async fn accept_loop(l: Arc<Listener>, socket: TcpListener) -> ListenerDrain {
    loop {
        tokio::select! {
            biased;
            _ = l.shutdown.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let l2 = l.clone();
                    match l.cfg.protocol {
                        Protocol::Tcp => match &l.edge.tls {
                            Some(t) => {
                                let t = t.clone();
                                l.tasks.spawn(async move {
                                    if let Some(s) = tls::handshake(&l2, &t, stream, peer).await {
                                        tcp::serve(l2, s, peer).await;
                                    }
                                })
                            }
                            None => l.tasks.spawn(tcp::serve(l2, stream, peer)),
                        },
                        Protocol::Http | Protocol::H2c => match &l.edge.tls {
                            Some(t) => l.tasks.spawn(tls::serve(l2, t.clone(), stream, peer)),
                            None => l.tasks.spawn(conn::serve(l2, stream, peer, None, false)),
                        },
                    };
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(listener = %l.name, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
    drain(&l, socket).await
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
        self.edges.iter().flat_map(Edge::reload).collect()
    }

    /// The supervisor reaped the app: requests that were in flight to it count this exit
    /// against their replays (see `retry.max_replays_after_app_exit`). Returns them, for the
    /// exit log. Call it before the proxy's readiness turns false.
    pub fn app_exited(&self) -> Vec<InFlight> {
        self.app_exits.app_exited()
    }

    /// Stops accepting on every listener, lets in-flight requests finish within each
    /// listener's `drain_timeout`, cuts the rest, and reports. Idempotent with cancelling
    /// the `shutdown` token given to [`serve`].
    pub async fn drain(self) -> DrainReport {
        self.shutdown.cancel();
        let mut report = DrainReport::default();
        for (task, (name, _)) in self.tasks.into_iter().zip(self.addrs) {
            match task.await {
                Ok(l) => report.listeners.push(l),
                Err(e) => {
                    tracing::error!(listener = %name, error = %e, "listener task failed");
                }
            }
        }
        report
    }
}
