//! Where a service's endpoints come from: a fixed list, or DNS (A/AAAA of a name with a port,
//! or SRV as Consul's and Nomad's DNS interfaces serve it), re-resolved on the answer's TTL.
//!
//! Invariant: a failed or empty resolution never replaces the last good endpoints (a DNS
//! outage must not take a working service away); it is counted and logged, and resolution is
//! tried again with back-off. The resolver is hickory's, in pure Rust: it works in a
//! `FROM scratch` image with no libc resolver.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;

use crate::config::outbound::Source;
use crate::config::OutboundConfig;
use crate::outbound::balance::Endpoints;
use crate::outbound::metrics::ServiceMetrics;

/// A failed resolution's first retry; doubled up to `dns_max_refresh`.
const RETRY_FIRST: Duration = Duration::from_millis(500);

/// Builds the resolver a service uses: its `resolver` address, or `/etc/resolv.conf`.
pub(crate) fn resolver(cfg: &OutboundConfig) -> Result<TokioResolver, String> {
    let mut builder = match &cfg.resolver {
        Some(r) => {
            let addr = crate::config::outbound::parse_resolver(r)?;
            let group = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], group),
                TokioConnectionProvider::default(),
            )
        }
        None => {
            TokioResolver::builder_tokio().map_err(|e| format!("reading /etc/resolv.conf: {e}"))?
        }
    };
    let opts = builder.options_mut();
    // tandem re-resolves on the TTL itself; a short cache still spares the server when
    // several services share a name.
    opts.cache_size = 64;
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    Ok(builder.build())
}

/// One answer: the endpoints and how long they are valid.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub addrs: Vec<SocketAddr>,
    pub ttl: Duration,
}

/// Resolves `source` once.
pub(crate) async fn resolve(r: &TokioResolver, source: &Source) -> Result<Answer, String> {
    let now = std::time::Instant::now();
    match source {
        Source::Static(addrs) => Ok(Answer {
            addrs: addrs.clone(),
            ttl: Duration::MAX,
        }),
        Source::Dns { name, port } => {
            let l = r
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            Ok(Answer {
                addrs: l.iter().map(|ip| SocketAddr::new(ip, *port)).collect(),
                ttl: l.valid_until().saturating_duration_since(now),
            })
        }
        Source::Srv(name) => {
            let l = r
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let mut ttl = l.as_lookup().valid_until().saturating_duration_since(now);
            let mut addrs = BTreeSet::new();
            for srv in l.iter() {
                let target = srv.target();
                // The addresses the answer carried for this target (Consul and dnsmasq add
                // them), else a lookup of the target.
                let mut ips: Vec<IpAddr> = l
                    .as_lookup()
                    .records()
                    .iter()
                    .filter(|rec| rec.name() == target)
                    .filter_map(|rec| match rec.data() {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    })
                    .collect();
                if ips.is_empty() {
                    match r.lookup_ip(target.clone()).await {
                        Ok(more) => {
                            ttl = ttl.min(more.valid_until().saturating_duration_since(now));
                            ips = more.iter().collect();
                        }
                        Err(e) => return Err(format!("{target} (target of {name}): {e}")),
                    }
                }
                addrs.extend(ips.into_iter().map(|ip| SocketAddr::new(ip, srv.port())));
            }
            Ok(Answer {
                addrs: addrs.into_iter().collect(),
                ttl,
            })
        }
    }
}

/// Keeps `endpoints` current until `stop`: re-resolves when the answer's TTL (clamped to
/// `dns_min_refresh..=dns_max_refresh`) runs out; keeps the last good answer on failure.
pub(crate) async fn follow(
    cfg: Arc<OutboundConfig>,
    source: Source,
    r: TokioResolver,
    endpoints: Arc<Endpoints>,
    metrics: Option<ServiceMetrics>,
    stop: CancellationToken,
) {
    let mut retry = RETRY_FIRST;
    let mut failing = false;
    loop {
        let wait = match resolve(&r, &source).await {
            Ok(a) if !a.addrs.is_empty() => {
                retry = RETRY_FIRST;
                let update = endpoints.update(&a.addrs);
                if failing || !update.added.is_empty() || !update.removed.is_empty() {
                    tracing::info!(
                        event = "outbound_endpoints",
                        service = %cfg.name,
                        endpoints = ?a.addrs,
                        added = update.added.len(),
                        removed = update.removed.len(),
                        "outbound service endpoints resolved"
                    );
                }
                failing = false;
                if let Some(m) = &metrics {
                    if !update.added.is_empty() || !update.removed.is_empty() {
                        m.resolver(true);
                    }
                    m.endpoints(a.addrs.len());
                    for gone in &update.removed {
                        m.forget(&gone.to_string());
                    }
                }
                a.ttl.clamp(cfg.dns_min_refresh, cfg.dns_max_refresh)
            }
            result => {
                let why = match result {
                    Ok(_) => "the answer has no endpoint".to_string(),
                    Err(e) => e,
                };
                let kept = endpoints.snapshot().len();
                tracing::warn!(
                    event = "outbound_resolve_failed",
                    service = %cfg.name,
                    error = %why,
                    kept,
                    "resolving the outbound service failed; the last good endpoints stay"
                );
                failing = true;
                if let Some(m) = &metrics {
                    m.resolver(false);
                }
                let w = retry;
                retry = (retry * 2).min(cfg.dns_max_refresh);
                w
            }
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
