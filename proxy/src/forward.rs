//! The inbound HTTP stack for one request, outermost first:
//!
//! 1. shed      — over `max_concurrent` in flight: 503 (load shedding)
//! 2. limits    — header size/count: 431; Content-Length over the body limit: 413
//! 3. hygiene   — request id, X-Forwarded-*, hop-by-hop headers stripped
//! 4. timeout   — the whole request (holds, attempts, backoff) within `timeouts.request`: 504
//! 5. ready     — wait for the app up to `hold_timeout`: 503 + Retry-After (before every attempt)
//! 6. replay    — read the body for replay, up to its limit
//! 7. retry     — attempts within `timeouts.per_try`, jittered backoff, budget
//! 8. upgrade   — a 101 from the app becomes a tunnel between the two upgraded connections
//!
//! Invariant: this is the only place the order of the stack is decided; each step lives in its
//! own module and is called from here, in this order.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{HeaderName, HeaderValue, HOST};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::time::Instant;

use crate::access_log::trace_id;
use crate::backoff::jittered;
use crate::cause::{Cause, ProxyBody};
use crate::config::Protocol;
use crate::hygiene::{
    check_header_limits, ensure_request_id, set_forwarded, strip_hop_by_hop, wants_upgrade,
    REQUEST_ID,
};
use crate::listener::Listener;
use crate::metered::{ConnActivity, CountingBody, MeteredBody, RequestGuard};
use crate::ready::wait_ready;
use crate::replay::{body_error_cause, Prepared};
use crate::retry::{is_safe_to_repeat, verdict, Outcome, Verdict};
use crate::upgrade;

/// Number of attempts sent to the app, as Envoy's `x-envoy-attempt-count`.
pub const ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-tandem-attempt-count");
/// Milliseconds the last attempt waited for the app's response headers.
pub const UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-tandem-upstream-service-time");

/// Handles one request end to end. Never fails: every failure is a response with a cause.
pub(crate) async fn handle(
    listener: Arc<Listener>,
    req: Request<Incoming>,
    peer: SocketAddr,
    conn: Arc<ConnActivity>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let mut guard = RequestGuard::new(
        listener.clone(),
        Some(conn),
        req.method(),
        req.uri().path(),
        start,
    );
    let result = match listener.limiter.clone().try_acquire_owned() {
        Ok(permit) => {
            guard.hold_permit(permit);
            proxy(req, peer, &mut guard, start).await
        }
        Err(_) => Err(Cause::Shed),
    };
    let resp = match result {
        Ok(resp) => resp,
        Err(cause) => {
            guard.set_cause(cause);
            tracing::debug!(listener = %listener.name, cause = %cause, "tandem answered");
            cause.response()
        }
    };
    finish(resp, guard)
}

/// Adds tandem's response headers and ties the guard to the body.
fn finish(mut resp: Response<ProxyBody>, mut guard: RequestGuard) -> Response<ProxyBody> {
    guard.record.status = resp.status().as_u16();
    let h = resp.headers_mut();
    h.insert(ATTEMPT_COUNT, HeaderValue::from(guard.record.attempts));
    if let Some(t) = guard.record.upstream_time {
        h.insert(
            UPSTREAM_SERVICE_TIME,
            HeaderValue::from(u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    if let Ok(id) = HeaderValue::from_str(&guard.record.request_id) {
        if !id.is_empty() {
            h.entry(REQUEST_ID).or_insert(id);
        }
    }
    resp.map(|body| MeteredBody::new(body, guard).boxed_unsync())
}

async fn proxy(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    guard: &mut RequestGuard,
    start: Instant,
) -> Result<Response<ProxyBody>, Cause> {
    let l = guard.listener().clone();
    let cfg = &l.cfg;
    check_header_limits(
        req.headers(),
        cfg.limits.max_header_bytes,
        cfg.limits.max_header_count,
    )?;

    let upgrade = cfg.protocol == Protocol::Http && wants_upgrade(req.headers());
    let client_upgrade: Option<OnUpgrade> = upgrade.then(|| hyper::upgrade::on(&mut req));
    req.extensions_mut().remove::<OnUpgrade>();
    let (mut parts, body) = req.into_parts();

    let rid = ensure_request_id(&mut parts.headers);
    guard.record.request_id = rid.to_str().unwrap_or_default().to_string();
    guard.record.trace_id = trace_id(
        parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    // HTTP/2 carries the host in :authority; an HTTP/1 app wants a Host header.
    if !parts.headers.contains_key(HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(HOST, v);
            }
        }
    }
    let host = parts
        .headers
        .get(HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    set_forwarded(&mut parts.headers, peer.ip(), "http", host.as_deref());
    strip_hop_by_hop(&mut parts.headers, upgrade);

    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = Uri::builder()
        .scheme("http")
        .authority(l.upstream.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| Cause::ClientBody)?;
    parts.uri = uri;
    parts.version = match cfg.protocol {
        Protocol::H2c => Version::HTTP_2,
        Protocol::Http | Protocol::Tcp => Version::HTTP_11,
    };

    l.budget.deposit();
    let deadline = start + cfg.timeouts.request;
    let body = CountingBody::new(body, guard.bytes_in.clone());
    let attempts = attempts(parts, body, guard, start);
    let mut resp = match tokio::time::timeout_at(deadline, attempts).await {
        Ok(r) => r?,
        Err(_) => return Err(Cause::RequestTimeout),
    };

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_upgrade {
            let app_side = hyper::upgrade::on(&mut resp);
            upgrade::tunnel(&l, client_side, app_side);
        }
    } else {
        strip_hop_by_hop(resp.headers_mut(), false);
    }
    Ok(resp.map(|b| b.boxed_unsync()))
}

/// The retry loop: attempts until a response worth returning, a failure not worth retrying,
/// the attempt limit, or an exhausted budget.
async fn attempts(
    parts: http::request::Parts,
    body: CountingBody<Incoming>,
    guard: &mut RequestGuard,
    start: Instant,
) -> Result<Response<Incoming>, Cause> {
    let l = guard.listener().clone();
    let cfg = &l.cfg;
    let hold_deadline = start + cfg.hold_timeout;
    let mut readiness = l.readiness.clone();
    let safe = is_safe_to_repeat(&parts.method, &parts.headers, &cfg.retry);

    // Hold before reading the body: a client with a large upload waits, not the buffer.
    wait_ready(&mut readiness, hold_deadline).await?;
    let mut prepared = Prepared::read(
        body,
        &parts.headers,
        cfg.retry.max_replay_body_bytes,
        cfg.limits.max_body_bytes,
    )
    .await?;

    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        if attempt > 1 {
            wait_ready(&mut readiness, hold_deadline).await?;
        }
        guard.record.attempts = attempt;
        if let Some(m) = &l.metrics {
            m.attempts.inc();
        }
        let mut req = Request::new(prepared.take_body());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = parts.extensions.clone();

        let sent = Instant::now();
        let result = tokio::time::timeout(cfg.timeouts.per_try, l.client.request(req)).await;
        guard.record.upstream_time = Some(sent.elapsed());
        let (outcome, resp) = match result {
            Err(_) => (Outcome::Failed(Cause::PerTryTimeout), None),
            Ok(Err(e)) => (Outcome::Failed(classify(&e)), None),
            Ok(Ok(r)) => (Outcome::Status(r.status()), Some(r)),
        };
        let last = attempt >= cfg.retry.max_attempts || !prepared.is_replayable();
        let go = match if last {
            Verdict::Stop
        } else {
            verdict(outcome, safe)
        } {
            Verdict::Stop => false,
            Verdict::Free => true,
            Verdict::Budgeted => {
                let ok = l.budget.try_withdraw();
                if !ok {
                    if let Some(m) = &l.metrics {
                        m.budget_exhausted.inc();
                    }
                }
                ok
            }
        };
        if !go {
            return match (resp, outcome) {
                (Some(r), _) => Ok(r),
                (None, Outcome::Failed(c)) => Err(c),
                (None, Outcome::Status(_)) => Err(Cause::UpstreamReset),
            };
        }
        let reason = match outcome {
            Outcome::Status(s) => match s.as_u16() {
                502 => "status_502",
                503 => "status_503",
                504 => "status_504",
                _ => "status_other",
            },
            Outcome::Failed(c) => c.as_str(),
        };
        tracing::debug!(listener = %l.name, attempt, %reason, "retrying");
        if let Some(m) = &l.metrics {
            m.retry(reason);
        }
        // Drop the failed response before waiting so its connection is released.
        drop(resp);
        tokio::time::sleep(jittered(
            cfg.retry.backoff_base,
            cfg.retry.backoff_max,
            attempt,
        ))
        .await;
    }
}

/// Maps a client error to a cause: connect failures (nothing reached the app) apart from
/// failures after the request may have been written.
fn classify(e: &hyper_util::client::legacy::Error) -> Cause {
    let mut timed_out = false;
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                if let Some(src) = h.source() {
                    return body_error_cause(src);
                }
                return Cause::ClientBody;
            }
        }
        if body_error_cause(err) == Cause::BodyTooLarge {
            return Cause::BodyTooLarge;
        }
        cur = err.source();
    }
    if e.is_connect() {
        if timed_out {
            Cause::ConnectTimeout
        } else {
            Cause::ConnectFailed
        }
    } else {
        Cause::UpstreamReset
    }
}
