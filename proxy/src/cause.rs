//! Why tandem itself answered a request instead of the app: one cause, one status, one short
//! body naming it, one label for logs and metrics.
//!
//! Invariant: the mapping is total and fixed here; no other module picks a status for a
//! tandem-made response, so logs, metrics and the client always agree on the cause.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;

/// The `Allow` header of a 405: the methods a listener forwards (every standard one but
/// CONNECT, which tunnels rather than asks for a resource).
const ALLOW: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, TRACE, PATCH";

/// A failure tandem answers for the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The client took longer than `timeouts.header_read` to send a request head (the
    /// connection is closed; no response is sent on it).
    HeaderReadTimeout,
    /// A write to the client made no progress for `timeouts.write` (the client stopped
    /// reading); the connection is closed, with no further response on it.
    WriteTimeout,
    /// The client spoke another protocol than the listener's (an HTTP/1 request to an `h2c`
    /// listener, an HTTP/2 preface to an `http` one); the connection is closed with no
    /// response.
    ProtocolError,
    /// A TCP-mode connection moved no byte either way for `timeouts.tcp_idle`; it is closed
    /// (a record's cause only: TCP has no response to send).
    IdleTimeout,
    /// Request headers or their count over the limit.
    HeadersTooLarge,
    /// Request body over the limit.
    BodyTooLarge,
    /// The app did not become ready within `hold_timeout`.
    NotReady,
    /// Too many requests in flight on the listener.
    Shed,
    /// The app's port refused or did not answer the connect.
    ConnectFailed,
    /// Connecting took longer than `timeouts.connect`.
    ConnectTimeout,
    /// The connection to the app broke after the request was (maybe) sent.
    UpstreamReset,
    /// The app exited while handling this request more often than
    /// `retry.max_replays_after_app_exit` allows: a request that may be crashing the app
    /// ("query of death") is not sent again.
    PoisonRequest,
    /// The TLS handshake with the app failed (`upstream_tls`: unknown CA, name mismatch,
    /// client certificate refused); not retried, it is a configuration problem.
    UpstreamTls,
    /// One attempt took longer than `timeouts.per_try`.
    PerTryTimeout,
    /// The whole request took longer than `timeouts.request`.
    RequestTimeout,
    /// The client's request body broke while it was read.
    ClientBody,
    /// The request cannot be forwarded as given (e.g. a path that is not a valid URI).
    BadRequest,
    /// No, several, or a malformed `Host`, or one that differs from the target's authority.
    BadHost(HostError),
    /// A method tandem does not forward (`CONNECT`: tandem fronts one app; it is no tunnel).
    MethodNotAllowed,
    /// The listener is draining.
    Draining,
    /// An outbound service has no endpoint to send to (none discovered yet, or the resolver
    /// never answered).
    NoEndpoints,
    /// An outbound service's circuit breaker is open: its `breaker.max_requests` are in flight
    /// and `breaker.max_pending` wait already; the request fails fast instead of queueing.
    BreakerOpen,
    /// No credentials, or credentials that do not verify (expired, wrong issuer, bad
    /// signature, unknown key); the challenge says which scheme to use.
    Unauthorized(Challenge),
    /// Valid credentials lacking a claim this listener requires.
    Forbidden,
    /// The client is over its rate; it may retry after this many seconds.
    RateLimited {
        /// Seconds until the client's bucket holds a token again (at least 1).
        retry_after_secs: u32,
    },
}

/// The `WWW-Authenticate` challenge of a 401 (RFC 9110 §11.6.1, RFC 6750 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Challenge {
    /// No bearer token was sent.
    Bearer,
    /// A bearer token was sent and rejected.
    BearerInvalid,
    /// Basic credentials are expected.
    Basic,
    /// An API key header is expected (no standard challenge: tandem names the header).
    ApiKey,
}

// === impl Cause ===

impl Cause {
    /// The status the client sees.
    pub fn status(self) -> StatusCode {
        match self {
            Cause::HeaderReadTimeout | Cause::WriteTimeout | Cause::IdleTimeout => {
                StatusCode::REQUEST_TIMEOUT
            }
            Cause::ProtocolError => StatusCode::BAD_REQUEST,
            Cause::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Cause::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Cause::NotReady
            | Cause::Shed
            | Cause::Draining
            | Cause::NoEndpoints
            | Cause::BreakerOpen => StatusCode::SERVICE_UNAVAILABLE,
            Cause::ConnectFailed
            | Cause::UpstreamReset
            | Cause::UpstreamTls
            | Cause::PoisonRequest => StatusCode::BAD_GATEWAY,
            Cause::ConnectTimeout | Cause::PerTryTimeout | Cause::RequestTimeout => {
                StatusCode::GATEWAY_TIMEOUT
            }
            Cause::ClientBody | Cause::BadRequest | Cause::BadHost(_) => StatusCode::BAD_REQUEST,
            Cause::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Cause::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Cause::Forbidden => StatusCode::FORBIDDEN,
            Cause::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A stable snake_case label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::HeaderReadTimeout => "header_read_timeout",
            Cause::WriteTimeout => "write_timeout",
            Cause::IdleTimeout => "idle_timeout",
            Cause::ProtocolError => "protocol_error",
            Cause::HeadersTooLarge => "headers_too_large",
            Cause::BodyTooLarge => "body_too_large",
            Cause::NotReady => "not_ready",
            Cause::Shed => "shed",
            Cause::ConnectFailed => "connect_failed",
            Cause::ConnectTimeout => "connect_timeout",
            Cause::UpstreamReset => "upstream_reset",
            Cause::PoisonRequest => "poison_request",
            Cause::UpstreamTls => "upstream_tls",
            Cause::PerTryTimeout => "per_try_timeout",
            Cause::RequestTimeout => "request_timeout",
            Cause::ClientBody => "client_body_error",
            Cause::BadRequest => "bad_request",
            Cause::BadHost(_) => "bad_host",
            Cause::MethodNotAllowed => "method_not_allowed",
            Cause::Draining => "draining",
            Cause::NoEndpoints => "no_endpoints",
            Cause::BreakerOpen => "breaker_open",
            Cause::Unauthorized(_) => "unauthorized",
            Cause::Forbidden => "forbidden",
            Cause::RateLimited { .. } => "rate_limited",
        }
    }

    /// Whether this cause is a timeout (for the timeouts-by-kind metric).
    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            Cause::HeaderReadTimeout
                | Cause::WriteTimeout
                | Cause::ConnectTimeout
                | Cause::PerTryTimeout
                | Cause::RequestTimeout
        )
    }

    /// The response tandem sends: status, a one-line body naming the cause, and Retry-After
    /// where waiting helps.
    pub fn response(self) -> Response<Full<Bytes>> {
        let body = match self {
            Cause::PoisonRequest => "tandem: poison_request: the app exited while handling this request, and again after it was replayed; it is not sent again\n".to_string(),
            Cause::BadHost(why) => format!("tandem: {}: {}\n", self.as_str(), why.reason()),
            _ => format!("tandem: {}\n", self.as_str()),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(
            self,
            Cause::NotReady | Cause::Shed | Cause::Draining | Cause::BreakerOpen
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Cause::RateLimited { retry_after_secs } = self {
            h.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        if let Cause::Unauthorized(c) = self {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(match c {
                    Challenge::Bearer => "Bearer realm=\"tandem\"",
                    Challenge::BearerInvalid => "Bearer realm=\"tandem\", error=\"invalid_token\"",
                    Challenge::Basic => "Basic realm=\"tandem\", charset=\"UTF-8\"",
                    Challenge::ApiKey => "ApiKey realm=\"tandem\"",
                }),
            );
        }
        if self == Cause::MethodNotAllowed {
            h.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
        }
        if self == Cause::Draining {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request's host was refused (the 400's body says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostError {
    /// An HTTP/1.1 request without a `Host` header (and without an absolute-form target).
    Missing,
    /// More than one `Host` header.
    Duplicate,
    /// A `Host` that is empty or not `host[:port]`.
    Malformed,
    /// `Host` and the target URI's authority disagree.
    Mismatch,
}

// === impl HostError ===

impl HostError {
    /// A one-line reason for the client.
    pub fn reason(self) -> &'static str {
        match self {
            HostError::Missing => "no Host header",
            HostError::Duplicate => "more than one Host header",
            HostError::Malformed => "the Host header is not a valid host[:port]",
            HostError::Mismatch => "the Host header differs from the request target's authority",
        }
    }
}
