//! The innermost step: one attempt to the app through the pooled keep-alive client,
//! within `timeouts.per_try`.
//!
//! Invariant: errors are classified by whether the request can have reached the app: a
//! failed connect cannot (`connect_failed`/`connect_timeout`, always safe to retry); anything
//! after the request may have been written is `upstream_reset`. A pooled connection found
//! dead before any byte was written is retried inside the pool and never surfaces here.

use std::error::Error as StdError;

use http::{Request, Response};
use http_body_util::Either;
use tokio::time::Instant;

use crate::cause::{Cause, ProxyBody};
use crate::http::replay::{body_error_cause, UpstreamBody};
use crate::http::route::Route;
use crate::obs::context::Ctx;
use crate::obs::trace::AttemptSpan;

/// Sends one attempt to the app, within `timeouts.per_try`.
pub(crate) async fn send(
    l: &Route,
    ctx: &Ctx,
    mut req: Request<UpstreamBody>,
) -> Result<Response<ProxyBody>, Cause> {
    let attempt = ctx.add_attempt();
    // the CLIENT span of this attempt (None when tracing is off): its traceparent goes to the app
    let span = AttemptSpan::start(l.hooks.tracer.as_ref(), &l.upstream, ctx, &mut req, attempt);
    if let Some(m) = &l.metrics {
        m.attempts.inc();
    }
    let sent = Instant::now();
    let result = tokio::time::timeout(l.cfg.timeouts.per_try, l.client.request(req)).await;
    ctx.set_upstream_time(sent.elapsed());
    let result = match result {
        Err(_) => Err(Cause::PerTryTimeout),
        Ok(Err(e)) => Err(classify(&e)),
        Ok(Ok(resp)) => Ok(resp.map(Either::Left)),
    };
    if let Some(span) = span {
        span.finish(result.as_ref().map(|r| r.status().as_u16()).map_err(|c| *c));
    }
    result
}

/// Maps a client error to a cause.
pub(crate) fn classify(e: &hyper_util::client::legacy::Error) -> Cause {
    let mut timed_out = false;
    let mut cur: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            // A user error is our request body failing: the client's upload, not the app.
            if h.is_user() {
                return h.source().map_or(Cause::ClientBody, body_error_cause);
            }
        }
        if err
            .downcast_ref::<crate::edge::upstream_tls::UpstreamTlsError>()
            .is_some()
        {
            return Cause::UpstreamTls;
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
