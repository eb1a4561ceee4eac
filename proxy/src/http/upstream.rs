//! The innermost step: one attempt to the app, within `timeouts.per_try`: over the app
//! connection bound to the client connection (HTTP/1.1, see `bound`), else through the pooled
//! keep-alive client.
//!
//! Invariant: errors are classified by whether the request can have reached the app: a
//! failed connect cannot (`connect_failed`/`connect_timeout`, always safe to retry); anything
//! after the request may have been written is `upstream_reset`. A reused connection found
//! dead before any byte was written is sent again on a fresh one (by the pool, or by `bound`)
//! and never surfaces here.

use std::error::Error as StdError;

use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::cause::Cause;
use crate::http::body::ProxyBody;
use crate::http::bound::{Bound, Failed};
use crate::http::h1;
use crate::http::replay::{body_error_cause, UpstreamBody};
use crate::http::route::Route;
use crate::obs::context::Ctx;
use crate::obs::trace::AttemptSpan;

/// Sends one attempt to the app, within `timeouts.per_try` (`bound`: the client connection's
/// app connection, for requests that may use it; `prime`: the request could be sent again, so
/// the answer is held until its body's first bytes, see [`prime`]).
pub(crate) async fn send(
    l: &Route,
    ctx: &Ctx,
    bound: Option<&Bound>,
    mut req: Request<UpstreamBody>,
    prime: bool,
) -> Result<Response<ProxyBody>, Cause> {
    let attempt = ctx.add_attempt();
    // the CLIENT span of this attempt (None when tracing is off): its traceparent goes to the app
    let span = AttemptSpan::start(l.hooks.tracer.as_ref(), &l.upstream, ctx, &mut req, attempt);
    if let Some(m) = &l.metrics {
        m.attempts.inc();
    }
    let sent = Instant::now();
    let attempt = async {
        let resp = match bound {
            Some(b) => b.send(l, req).await.map_err(|f| match f {
                Failed::Connect(e) => cause_of(&*e, true),
                Failed::Send(e) => cause_of(&e, false),
                // the client's upload failed (or went over the body limit): not the app
                Failed::Exchange(h1::Error::Body(e)) => body_error_cause(&*e),
                Failed::Exchange(_) => Cause::UpstreamReset,
            }),
            None => l
                .client
                .request(req)
                .await
                .map(|r| r.map(ProxyBody::Pooled))
                .map_err(|e| classify(&e)),
        }?;
        if prime {
            self::prime(resp).await
        } else {
            Ok(resp)
        }
    };
    let result = tokio::time::timeout(l.cfg.timeouts.per_try, attempt).await;
    ctx.set_upstream_time(sent.elapsed());
    let result = match result {
        Err(_) => Err(Cause::PerTryTimeout),
        Ok(Err(cause)) => Err(cause),
        Ok(Ok(resp)) => Ok(resp),
    };
    if let Some(span) = span {
        span.finish(result.as_ref().map(|r| r.status().as_u16()).map_err(|c| *c));
    }
    result
}

/// Holds an answer with a `Content-Length` body until the body's first bytes are in: an app
/// that dies (a crash, a restart's SIGKILL) after writing its head and before its body fails
/// the attempt here (`upstream_reset`), while nothing has gone to the client, and the request
/// can be sent again. Once bytes went to the client a failure can only cut the answer short.
/// Chunked and close-delimited bodies are not held: they may stream, with their first bytes
/// long in coming (server-sent events).
async fn prime(resp: Response<ProxyBody>) -> Result<Response<ProxyBody>, Cause> {
    if resp.body().size_hint().exact().is_none_or(|n| n == 0) {
        return Ok(resp);
    }
    let (parts, body) = resp.into_parts();
    let body = match body {
        ProxyBody::Bound(mut b) => {
            b.prime().await.map_err(|_| Cause::UpstreamReset)?;
            ProxyBody::Bound(b)
        }
        ProxyBody::Pooled(mut b) => match b.frame().await {
            Some(Ok(first)) => ProxyBody::Primed(Box::new((Some(first), b))),
            Some(Err(_)) => return Err(Cause::UpstreamReset),
            // A clean end is the app's answer, not a failure: hyper reports a length body cut
            // short as an error, and an HTTP/2 answer to HEAD carries a length and no data.
            None => ProxyBody::Primed(Box::new((None, b))),
        },
        other => other,
    };
    Ok(Response::from_parts(parts, body))
}

/// Maps a pooled client's error to a cause.
pub(crate) fn classify(e: &hyper_util::client::legacy::Error) -> Cause {
    match e.source() {
        Some(source) => cause_of(source, e.is_connect()),
        None if e.is_connect() => Cause::ConnectFailed,
        None => Cause::UpstreamReset,
    }
}

/// Maps an error on the way to the app to a cause (`connecting`: it came before the request
/// could be written: the connect or the TLS handshake).
pub(crate) fn cause_of(e: &(dyn StdError + 'static), connecting: bool) -> Cause {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(err) = cur {
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
    if connecting {
        if timed_out(e) {
            Cause::ConnectTimeout
        } else {
            Cause::ConnectFailed
        }
    } else {
        Cause::UpstreamReset
    }
}

/// Whether an error chain holds an I/O timeout.
fn timed_out(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}
