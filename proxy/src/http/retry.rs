//! Which failed attempts may be tried again.
//!
//! Invariant: a request whose bytes may have reached the app is retried only when repeating it
//! is safe: an idempotent method (RFC 9110 §9.2.2), a POST with `Idempotency-Key` (if
//! configured), or everything when the operator said so. A failed connect never reached the
//! app, so it is always safe (and does not draw on the budget). Only a body kept whole for
//! replay (see `replay`) can be sent again; a streamed one gets one attempt.
//!
//! A failed connect is not an attempt: the app is not listening (starting, restarting, or
//! dead and not yet reaped), so the request waits, reconnecting with back-off, until its hold
//! deadline, exactly as it would wait at the readiness gate. A request that was in flight
//! when the app exited is replayed at most `max_replays_after_app_exit` times (see
//! `app_exits`): one request must not crash the app once per attempt.

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;

use crate::cause::Cause;
use crate::config::RetryConfig;
use crate::grpc;
use crate::http::app_exits::Registered;
use crate::http::backoff::jittered;
use crate::http::body::ProxyBody;
use crate::http::bound::Bound;
use crate::http::replay::{BoxError, Prepared};
use crate::http::route::Route;
use crate::http::{ready, upstream};
use crate::obs::context::Ctx;

/// What one attempt ended with, as far as retrying cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The app answered with this status.
    Status(StatusCode),
    /// The attempt failed with this cause.
    Failed(Cause),
}

/// Whether the retry may be taken, and whether it draws on the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Do not retry.
    Stop,
    /// Retry without drawing on the budget: nothing reached the app.
    Free,
    /// Retry if the budget allows.
    Budgeted,
}

/// The header that makes a POST safe to repeat (`retry_post_with_idempotency_key`).
const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// Whether a request may be sent twice.
pub fn is_safe_to_repeat(method: &Method, headers: &HeaderMap, cfg: &RetryConfig) -> bool {
    if cfg.retry_non_idempotent {
        return true;
    }
    let idempotent = matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    idempotent
        || (cfg.retry_post_with_idempotency_key
            && *method == Method::POST
            && headers.contains_key(IDEMPOTENCY_KEY))
}

/// Classifies an attempt's outcome.
pub fn verdict(outcome: Outcome, safe_to_repeat: bool) -> Verdict {
    match outcome {
        Outcome::Failed(Cause::ConnectFailed | Cause::ConnectTimeout) => Verdict::Free,
        Outcome::Failed(Cause::UpstreamReset | Cause::PerTryTimeout) if safe_to_repeat => {
            Verdict::Budgeted
        }
        Outcome::Status(s)
            if safe_to_repeat
                && matches!(
                    s,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ) =>
        {
            Verdict::Budgeted
        }
        _ => Verdict::Stop,
    }
}

/// Attempts until a response worth returning, a failure not worth retrying, the attempt
/// limit, or an exhausted budget. Each attempt passes the readiness gate again (the app may be
/// restarting) and then goes to [`upstream::send`] (`bound`: the client connection's app
/// connection, when the request may use it).
pub(crate) async fn attempts<B>(
    l: &Route,
    ctx: &Ctx,
    bound: Option<&Bound>,
    req: Request<B>,
) -> Result<Response<ProxyBody>, Cause>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let cfg = &l.cfg.retry;
    let (parts, body) = req.into_parts();
    let safe = is_safe_to_repeat(&parts.method, &parts.headers, cfg);
    let is_grpc = grpc::is_grpc(&parts.headers);
    l.budget.deposit();
    let mut prepared = Prepared::read(
        body,
        &parts.headers,
        cfg.max_replay_body_bytes,
        l.cfg.limits.max_body_bytes,
    )
    .await?;
    let hold_deadline = ctx.start + l.cfg.hold_timeout;
    // Attempts that reached the app (or timed out trying), and connects that failed.
    let mut attempt: u32 = 0;
    let mut connects_failed: u32 = 0;
    // The last attempt that reached the app, registered as in flight until the next one.
    let mut reached: Option<Registered> = None;
    let mut replays_after_exit: u32 = 0;
    loop {
        let mut req = Request::new(prepared.take_body());
        *req.method_mut() = parts.method.clone();
        *req.uri_mut() = parts.uri.clone();
        *req.version_mut() = parts.version;
        *req.headers_mut() = parts.headers.clone();
        *req.extensions_mut() = parts.extensions.clone();
        let result = match ready::gate(&l.readiness, hold_deadline).await {
            Ok(()) => {
                if reached.as_ref().is_some_and(Registered::app_exited_since) {
                    // The app exited while (or right after) it had this request.
                    reached = None;
                    replays_after_exit += 1;
                    if replays_after_exit > cfg.max_replays_after_app_exit {
                        poisoned(l, ctx, &parts.method, &parts.uri, replays_after_exit);
                        return Err(Cause::PoisonRequest);
                    }
                    tracing::info!(listener = %l.name, method = %parts.method, path = parts.uri.path(), request_id = %ctx.request_id(), "replaying a request that was in flight when the app exited");
                }
                let registered =
                    l.app_exits
                        .register(&parts.method, &parts.uri, ctx.request_id_value());
                // Boxed: the attempt's future (~2.9 KB) is not part of this one, nor of the
                // five futures around it, each of which is moved whole when it starts.
                // Held until the body's first bytes when a failure then could still be retried.
                // (Not for HEAD: its answer's length describes a body that never comes.)
                let prime = safe
                    && parts.method != Method::HEAD
                    && prepared.is_replayable()
                    && attempt + 1 < cfg.max_attempts;
                let result = Box::pin(upstream::send(l, ctx, bound, req, prime)).await;
                if !matches!(result, Err(Cause::ConnectFailed | Cause::ConnectTimeout)) {
                    reached = Some(registered);
                }
                result
            }
            Err(cause) => Err(cause),
        };
        let outcome = match &result {
            Ok(resp) => Outcome::Status(resp.status()),
            Err(cause) => Outcome::Failed(*cause),
        };
        // gRPC's UNAVAILABLE in a trailers-only answer: the app did not process the call, so
        // it is safe to repeat whatever the method (POST, always, for gRPC).
        let grpc_unavailable = is_grpc
            && matches!(&result, Ok(r) if grpc::status(r.headers()) == Some(grpc::UNAVAILABLE));
        let connect_failed = matches!(
            outcome,
            Outcome::Failed(Cause::ConnectFailed | Cause::ConnectTimeout)
        );
        let last = if connect_failed {
            connects_failed += 1;
            tokio::time::Instant::now() >= hold_deadline
        } else {
            attempt += 1;
            attempt >= cfg.max_attempts
        } || !prepared.is_replayable();
        let go = match if last {
            Verdict::Stop
        } else if grpc_unavailable {
            Verdict::Budgeted
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
            return result;
        }
        let reason = match outcome {
            _ if grpc_unavailable => "grpc_unavailable",
            Outcome::Status(s) => match s.as_u16() {
                502 => "status_502",
                503 => "status_503",
                504 => "status_504",
                _ => "status_other",
            },
            Outcome::Failed(c) => c.as_str(),
        };
        tracing::debug!(listener = %l.name, attempt, reason, "retrying");
        if let Some(m) = &l.metrics {
            m.retry(reason);
        }
        // Drop the failed response before waiting so its connection is released.
        drop(result);
        let backoff = if connect_failed {
            // Never past the hold deadline: the last reconnect happens at it.
            let left = hold_deadline.saturating_duration_since(tokio::time::Instant::now());
            jittered(cfg.backoff_base, cfg.backoff_max, connects_failed).min(left)
        } else {
            jittered(cfg.backoff_base, cfg.backoff_max, attempt)
        };
        tokio::time::sleep(backoff).await;
    }
}

/// A request in flight at one app exit more than it may be replayed after: answered with 502,
/// counted and logged, never sent again.
fn poisoned(l: &Route, ctx: &Ctx, method: &Method, uri: &http::Uri, exits: u32) {
    if let Some(m) = &l.metrics {
        m.poison_requests.inc();
    }
    tracing::warn!(
        event = "poison_request",
        listener = %l.name,
        method = %method,
        path = uri.path(),
        request_id = %ctx.request_id(),
        app_exits = exits,
        "the app exited while handling this request, also after it was replayed; not sending it again"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safety() {
        let cfg = RetryConfig::default();
        let none = HeaderMap::new();
        let mut key = HeaderMap::new();
        key.insert("idempotency-key", http::HeaderValue::from_static("k1"));
        assert!(is_safe_to_repeat(&Method::GET, &none, &cfg));
        assert!(is_safe_to_repeat(&Method::PUT, &none, &cfg));
        assert!(!is_safe_to_repeat(&Method::POST, &none, &cfg));
        assert!(is_safe_to_repeat(&Method::POST, &key, &cfg));
        assert!(!is_safe_to_repeat(&Method::PATCH, &key, &cfg));
        let off = RetryConfig {
            retry_post_with_idempotency_key: false,
            ..RetryConfig::default()
        };
        assert!(!is_safe_to_repeat(&Method::POST, &key, &off));
    }

    #[test]
    fn verdicts() {
        let s = |c| Outcome::Status(StatusCode::from_u16(c).expect("status"));
        assert_eq!(
            verdict(Outcome::Failed(Cause::ConnectFailed), false),
            Verdict::Free
        );
        assert_eq!(
            verdict(Outcome::Failed(Cause::UpstreamReset), false),
            Verdict::Stop
        );
        assert_eq!(
            verdict(Outcome::Failed(Cause::UpstreamReset), true),
            Verdict::Budgeted
        );
        assert_eq!(verdict(s(503), true), Verdict::Budgeted);
        assert_eq!(verdict(s(503), false), Verdict::Stop);
        assert_eq!(verdict(s(500), true), Verdict::Stop);
        assert_eq!(verdict(s(200), true), Verdict::Stop);
    }
}
