//! The app connection bound to one HTTP/1.1 client connection: a client connection that
//! sends request after request gets them forwarded over one keep-alive connection to the app,
//! held by the client connection for its life, as HAProxy's private server connections and
//! Pingora's per-session reuse do. No pool checkout, no pool key hashed or cloned, no task
//! spawned per request to return a connection to the pool.
//!
//! Invariant: a bound connection is used only when it is idle (its last response ended) and
//! was used less than `timeouts.pool_idle` ago, the same bound the pooled client keeps: an
//! app closing keep-alive connections after a few seconds (Node's 5 s) never gets a request
//! on a connection it is closing, and the client connection's clocks close it once it has been
//! idle that long (the pool's idle eviction), so an idle client does not hold one of the app's
//! connections (or threads) open. A request the connection closed before writing is sent
//! again on a fresh one (it never reached the app); a failure after that is the caller's to
//! classify and retry. HTTP/2 clients, `h2c` apps and upgrades keep the pooled client.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::header::HOST;
use http::{Method, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use tokio::time::Instant;
use tower::Service;

use crate::http::replay::{BoxError, UpstreamBody};
use crate::http::route::Route;

/// Why an attempt over a bound connection failed, for [`crate::http::upstream`] to classify.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Connecting (TCP, TLS, the HTTP/1 handshake): the request was not written.
    Connect(BoxError),
    /// Sending the request or reading the answer's head.
    Send(hyper::Error),
}

/// See the module doc.
#[derive(Default)]
pub(crate) struct Bound {
    /// The connection between requests, and when its last answer's head came (the last use).
    idle: Mutex<Option<(SendRequest<UpstreamBody>, Instant)>>,
}

// === impl Bound ===

impl Bound {
    /// Sends `req` (an absolute URI naming the app, as [`crate::http::hygiene::rewrite`]
    /// makes it) over the bound connection, or a fresh one.
    pub async fn send(
        &self,
        l: &Route,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Failed> {
        to_origin_form(&mut req, &l.upstream_uri);
        loop {
            let (mut tx, reused) = match self.take(l) {
                Some(tx) => (tx, true),
                None => (connect(l).await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.put(tx);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Closed before a byte of it was written: safe for any method.
                    Some(back) if reused => req = back,
                    _ => return Err(Failed::Send(e.into_error())),
                },
            }
        }
    }

    /// The bound connection, if it can take a request now.
    fn take(&self, l: &Route) -> Option<SendRequest<UpstreamBody>> {
        let (tx, used) = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        // Not ready: its last response is still streaming, or it closed. Dropping it lets
        // hyper finish that exchange and close it.
        (tx.is_ready() && used.elapsed() < l.cfg.timeouts.pool_idle).then_some(tx)
    }

    /// Closes the connection if it has been idle for `after` (the client connection is
    /// idle too: a busy connection is out of the slot); else says when to look again.
    pub fn expire(&self, after: Duration) -> Option<Instant> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let due = idle.as_ref().map(|(_, used)| *used + after)?;
        if due > Instant::now() {
            return Some(due);
        }
        // Dropping the sender ends hyper's connection task, which closes the socket.
        *idle = None;
        None
    }

    fn put(&self, tx: SendRequest<UpstreamBody>) {
        *self.idle.lock().unwrap_or_else(PoisonError::into_inner) = Some((tx, Instant::now()));
    }
}

/// Opens a connection to the app (TCP, then TLS if configured) and spawns its driver.
async fn connect(l: &Route) -> Result<SendRequest<UpstreamBody>, Failed> {
    let io = l
        .connector
        .clone()
        .call(l.upstream_uri.clone())
        .await
        .map_err(Failed::Connect)?;
    let (tx, conn) =
        l.h1.handshake(io)
            .await
            .map_err(|e| Failed::Connect(e.into()))?;
    let name = l.name.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(listener = %name, error = %e, "app connection ended");
        }
    });
    Ok(tx)
}

/// What the pooled client does to a request for an HTTP/1 connection: the request target in
/// origin form (authority form for CONNECT), and a Host header if the request has none.
fn to_origin_form(req: &mut Request<UpstreamBody>, app: &Uri) {
    if !req.headers().contains_key(HOST) {
        if let Some(a) = req.uri().authority().or(app.authority()) {
            if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                req.headers_mut().insert(HOST, v);
            }
        }
    }
    let target = if req.method() == Method::CONNECT {
        req.uri()
            .authority()
            .and_then(|a| Uri::try_from(a.as_str()).ok())
    } else {
        match req.uri().path_and_query() {
            Some(p) if p.as_str() != "/" => Some(Uri::from(p.clone())),
            _ => Some(Uri::from_static("/")),
        }
    };
    if let Some(t) = target {
        *req.uri_mut() = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn req(method: Method, uri: &str, host: Option<&str>) -> Request<UpstreamBody> {
        let mut r = Request::new(
            http_body_util::Empty::new()
                .map_err(
                    |never: std::convert::Infallible| -> crate::http::replay::BoxError {
                        match never {}
                    },
                )
                .boxed_unsync(),
        );
        *r.method_mut() = method;
        *r.uri_mut() = uri.parse().expect("uri");
        if let Some(h) = host {
            r.headers_mut().insert(HOST, h.parse().expect("host"));
        }
        r
    }

    #[test]
    fn origin_form_as_the_pooled_client_writes_it() {
        let app: Uri = "http://127.0.0.1:3000".parse().expect("uri");
        let mut r = req(
            Method::GET,
            "http://127.0.0.1:3000/a/b?c=d",
            Some("example.com"),
        );
        to_origin_form(&mut r, &app);
        assert_eq!(r.uri(), "/a/b?c=d");
        assert_eq!(r.headers()[HOST], "example.com");

        let mut r = req(Method::GET, "http://127.0.0.1:3000", None);
        to_origin_form(&mut r, &app);
        assert_eq!(r.uri(), "/");
        assert_eq!(r.headers()[HOST], "127.0.0.1:3000");

        let mut r = req(
            Method::CONNECT,
            "http://db.internal:5432/",
            Some("db.internal"),
        );
        to_origin_form(&mut r, &app);
        assert_eq!(r.uri().to_string(), "db.internal:5432");
    }
}
