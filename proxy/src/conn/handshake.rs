//! A client connection's TLS handshake, bounded and counted, then the connection served as
//! HTTP over it.
//!
//! Invariant: the handshake runs within `timeouts.header_read` (the slow-client guard) and
//! stops at the start of a drain; a failure is counted every time but logged at most a
//! burst per window (the listener's [`TlsState`] keeps that budget).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::Protocol;
use crate::conn::listener::Listener;
use crate::edge::mtls;
use crate::edge::quiet::Decision;
use crate::edge::tls::{failure_reason, TlsInfo, TlsState};

/// Handshakes a new connection, bounded by `timeouts.header_read` (the slow-client guard). A
/// failed handshake (no client certificate, wrong CA, expired, SAN not listed, not TLS at
/// all) closes the connection, the client sees the TLS alert, and the failure is counted by
/// reason and logged as a `tls_handshake_failed` event.
pub(crate) async fn handshake(
    l: &Listener,
    tls: &TlsState,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    let acceptor = tls.acceptor();
    let handshake = tokio::time::timeout(l.route.cfg.timeouts.header_read, acceptor.accept(stream));
    let (reason, error) = tokio::select! {
        r = handshake => match r {
            Ok(Ok(s)) => return Some(s),
            Ok(Err(e)) => (failure_reason(&e), e.to_string()),
            Err(_) => ("timeout", "no complete handshake within timeouts.header_read".into()),
        },
        _ = l.shutdown.cancelled() => return None,
    };
    if let Some(m) = &l.route.metrics {
        m.tls_handshake_failure(reason);
    }
    // A flood of failures (a scanner, a client with the wrong CA in a retry loop) is counted
    // in full but logged at most FAILURE_EVENT_BURST times per window.
    if let Decision::Log { suppressed } = tls.failure_events.check(Instant::now()) {
        tracing::info!(
            event = "tls_handshake_failed",
            listener = %l.route.name,
            %peer,
            reason,
            error = %error,
            suppressed,
            "TLS handshake failed"
        );
    }
    None
}

/// Handshakes a new connection, then serves it as HTTP.
pub(crate) async fn serve(
    l: Arc<Listener>,
    tls: Arc<TlsState>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Some(stream) = handshake(&l, &tls, stream, peer).await else {
        return;
    };
    let (_, conn) = stream.get_ref();
    // ALPN chose h2, or an `h2c` listener (which offers only h2) met a client without ALPN.
    let h2 = conn.alpn_protocol() == Some(b"h2") || l.route.cfg.protocol == Protocol::H2c;
    let client_identity = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|leaf| mtls::identity(leaf))
        .map(Arc::from);
    crate::conn::serve::serve(l, stream, peer, Some(TlsInfo { client_identity }), h2).await;
}
