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
//!
//! Who drives the connection: tandem's own HTTP/1 exchange (`h1`) for the common request to
//! a plain-TCP app, else hyper's HTTP/1 client (TLS to the app, kept header case, or a
//! request `h1` does not take, which hands the connection to hyper for the rest of its life).

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use http::header::HOST;
use http::{Method, Request, Response, Uri};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tower::Service;

use crate::edge::upstream_tls::AppIo;
use crate::http::body::ProxyBody;
use crate::http::h1::{self, Park};
use crate::http::replay::{BoxError, UpstreamBody};
use crate::http::route::Route;

/// Why an attempt over a bound connection failed, for [`crate::http::upstream`] to classify.
#[derive(Debug)]
pub(crate) enum Failed {
    /// Connecting (TCP, TLS, the HTTP/1 handshake): the request was not written.
    Connect(BoxError),
    /// Sending the request or reading the answer's head (hyper's client).
    Send(hyper::Error),
    /// The same, in tandem's own exchange.
    Exchange(h1::Error),
}

/// See the module doc.
#[derive(Default)]
pub(crate) struct Bound {
    /// The connection between requests when tandem's own exchange drives it (a plain-TCP
    /// app whose header case is not kept), and when its last answer's head came.
    park: Park,
    /// The connection between requests when hyper's client drives it: TLS to the app, kept
    /// header case, or since a request the own exchange does not take (a streamed upload).
    idle: Mutex<Option<(SendRequest<UpstreamBody>, Instant)>>,
}

/// An idle connection taken for a request.
enum Taken {
    Own(Box<h1::Conn>),
    Hyper(SendRequest<UpstreamBody>),
}

// === impl Bound ===

impl Bound {
    /// Sends `req` (an absolute URI naming the app, as [`crate::http::hygiene::rewrite`]
    /// makes it) over the bound connection, or a fresh one.
    pub async fn send(
        &self,
        l: &Route,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ProxyBody>, Failed> {
        to_origin_form(&mut req, &l.upstream_uri);
        let own = l.own_h1 && h1::eligible(&req);
        loop {
            let (mut tx, reused) = match self.take(l) {
                Some(Taken::Own(conn)) if own => return self.exchange(conn, req).await,
                // hyper's client takes the connection over for good
                Some(Taken::Own(conn)) => (
                    handshake(l, AppIo::Plain(TokioIo::new((*conn).into_io()))).await?,
                    true,
                ),
                Some(Taken::Hyper(tx)) => (tx, true),
                None => match connect(l).await? {
                    AppIo::Plain(tcp) if own => {
                        return self.exchange(h1::Conn::new(tcp.into_inner()), req).await
                    }
                    io => (handshake(l, io).await?, false),
                },
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    self.put(tx);
                    return Ok(resp.map(ProxyBody::Pooled));
                }
                Err(mut e) => match e.take_message() {
                    // Closed before a byte of it was written: safe for any method.
                    Some(back) if reused => req = back,
                    _ => return Err(Failed::Send(e.into_error())),
                },
            }
        }
    }

    async fn exchange(
        &self,
        conn: Box<h1::Conn>,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ProxyBody>, Failed> {
        match conn.exchange(req, &self.park).await {
            Ok(resp) => Ok(resp.map(ProxyBody::Bound)),
            Err(e) => Err(Failed::Exchange(e)),
        }
    }

    /// The bound connection, if it can take a request now.
    fn take(&self, l: &Route) -> Option<Taken> {
        let fresh = |used: Instant| used.elapsed() < l.cfg.timeouts.pool_idle;
        if let Some(conn) = lock(&self.park).take() {
            // Closed by the app, or it sent something unasked: dropped.
            return (fresh(conn.used()) && conn.is_reusable()).then_some(Taken::Own(conn));
        }
        let (tx, used) = lock(&self.idle).take()?;
        // Not ready: its last response is still streaming, or it closed. Dropping it lets
        // hyper finish that exchange and close it.
        (tx.is_ready() && fresh(used)).then_some(Taken::Hyper(tx))
    }

    /// Closes the connection if it has been idle for `after` (the client connection is
    /// idle too: a busy connection is out of the slot); else says when to look again.
    pub fn expire(&self, after: Duration) -> Option<Instant> {
        // Dropping hyper's sender ends its connection task, which closes the socket.
        match (expire(&self.park, after), expire(&self.idle, after)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn put(&self, tx: SendRequest<UpstreamBody>) {
        *lock(&self.idle) = Some((tx, Instant::now()));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An idle connection: when it was last used.
trait Idle {
    fn used(&self) -> Instant;
}

impl Idle for Box<h1::Conn> {
    fn used(&self) -> Instant {
        h1::Conn::used(self)
    }
}

impl Idle for (SendRequest<UpstreamBody>, Instant) {
    fn used(&self) -> Instant {
        self.1
    }
}

/// Empties `slot` if what it holds has been idle for `after`; else when to look again.
fn expire<T: Idle>(slot: &Mutex<Option<T>>, after: Duration) -> Option<Instant> {
    let mut idle = lock(slot);
    let due = idle.as_ref().map(|i| i.used() + after)?;
    if due > Instant::now() {
        return Some(due);
    }
    *idle = None;
    None
}

/// Opens a connection to the app (TCP, then TLS if configured).
async fn connect(l: &Route) -> Result<AppIo, Failed> {
    l.connector
        .clone()
        .call(l.upstream_uri.clone())
        .await
        .map_err(Failed::Connect)
}

/// hyper's HTTP/1 client on `io`, its driver spawned.
async fn handshake(l: &Route, io: AppIo) -> Result<SendRequest<UpstreamBody>, Failed> {
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
