//! A raw TCP outbound service: each connection of the app goes to one endpoint chosen by the
//! balancer; a failed connect is tried on another endpoint (up to `retry.max_attempts`).
//!
//! Invariant: a connection holds its breaker place and its endpoint's in-flight count until
//! it closes; connect failures feed outlier ejection, an established connection counts as a
//! success.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::OutboundConfig;
use crate::conn::tcp::{copy_until_idle, Copied, Io};
use crate::edge::upstream_tls::UpstreamTls;
use crate::outbound::balance::{self, Endpoints};
use crate::outbound::breaker::Breaker;
use crate::outbound::metrics::ServiceMetrics;

/// What the connections of one TCP service share.
pub(crate) struct TcpService {
    pub cfg: Arc<OutboundConfig>,
    pub tls: Option<Arc<UpstreamTls>>,
    pub endpoints: Arc<Endpoints>,
    pub breaker: Breaker,
    pub metrics: Option<ServiceMetrics>,
}

/// Forwards one connection of the app until either side closes, it idles past
/// `timeouts.tcp_idle`, or the drain deadline cuts it.
pub(crate) async fn serve(svc: Arc<TcpService>, client: TcpStream, tokens: super::Tokens) {
    let (_stop, cut) = tokens;
    let cfg = &svc.cfg;
    if let Some(m) = &svc.metrics {
        m.tcp_connection();
    }
    let deadline = Instant::now() + cfg.timeouts.connect * cfg.retry.max_attempts.max(1);
    let Ok(_permit) = svc.breaker.acquire(deadline).await else {
        tracing::debug!(service = %cfg.name, "outbound tcp connection refused: breaker open");
        return;
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let (ep, upstream) = loop {
        let Some(ep) = svc.endpoints.pick(cfg.balance, &tried) else {
            tracing::debug!(service = %cfg.name, "outbound tcp connection: no endpoints");
            return;
        };
        tried.push(ep.addr);
        let started = Instant::now();
        let result = tokio::time::timeout(cfg.timeouts.connect, TcpStream::connect(ep.addr)).await;
        let ok = matches!(result, Ok(Ok(_)));
        if let Some(m) = &svc.metrics {
            m.attempt(
                &ep.label,
                match &result {
                    Ok(Ok(_)) => "connected",
                    Ok(Err(_)) => "connect_failed",
                    Err(_) => "connect_timeout",
                },
            );
        }
        let verdict = if ok {
            balance::Verdict::Healthy
        } else {
            balance::Verdict::Failed
        };
        super::record_outcome(cfg, &svc.endpoints, svc.metrics.as_ref(), &ep, verdict);
        if let Ok(Ok(s)) = result {
            ep.observe(started.elapsed());
            break (ep, s);
        }
        if tried.len() as u32 >= cfg.retry.max_attempts {
            tracing::debug!(service = %cfg.name, "outbound tcp connection: every attempt to connect failed");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _in_flight = ep.begin();
    let mut upstream: Box<dyn Io> = match &svc.tls {
        None => Box::new(upstream),
        Some(tls) => match tls.connect(upstream, None).await {
            Ok(s) => Box::new(s),
            // Logged (upstream_tls_failed) by connect; a configuration problem, not retried.
            Err(_) => return,
        },
    };
    match copy_until_idle(client, &mut *upstream, cfg.timeouts.tcp_idle, &cut).await {
        Copied::Done(Err(e)) => {
            tracing::debug!(service = %cfg.name, endpoint = %ep.label, error = %e, "outbound tcp connection broke");
        }
        Copied::Idle => {
            tracing::debug!(service = %cfg.name, endpoint = %ep.label, "outbound tcp connection idle; closing");
        }
        Copied::Done(Ok(_)) | Copied::Cut => {}
    }
}
