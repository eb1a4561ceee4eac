//! Request size limits checked before anything is forwarded: header bytes and count (431),
//! and a declared Content-Length over the body limit (413). A body without Content-Length is
//! limited while it is read (see `replay`).
//!
//! Invariant: hyper enforces a coarser parse-buffer limit before this layer runs (and answers
//! 431 itself); the check here is the exact, configurable one.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use tower::{Layer, Service, ServiceExt};

use crate::cause::{Cause, ProxyBody};
use crate::listener::Listener;
use crate::stack::BoxFuture;

/// 431 when the request head is over the configured size or count.
pub fn check_header_limits(
    headers: &HeaderMap,
    max_bytes: usize,
    max_count: usize,
) -> Result<(), Cause> {
    if headers.len() > max_count {
        return Err(Cause::HeadersTooLarge);
    }
    // name + ": " + value + CRLF, as on the wire.
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if bytes > max_bytes {
        return Err(Cause::HeadersTooLarge);
    }
    Ok(())
}

/// 413 when Content-Length is over `max_body`.
pub fn check_content_length(headers: &HeaderMap, max_body: Option<u64>) -> Result<(), Cause> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (declared, max_body) {
        (Some(len), Some(max)) if len > max => Err(Cause::BodyTooLarge),
        _ => Ok(()),
    }
}

/// The limits layer.
pub(crate) fn layer<S>(l: Arc<Listener>) -> impl Layer<S, Service = Limits<S>> + Clone {
    tower::layer::layer_fn(move |inner| Limits {
        inner,
        l: l.clone(),
    })
}

/// See [`layer`].
#[derive(Clone)]
pub(crate) struct Limits<S> {
    inner: S,
    l: Arc<Listener>,
}

impl<S, B> Service<Request<B>> for Limits<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = Cause> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = Cause;
    type Future = BoxFuture<Result<Response<ProxyBody>, Cause>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Cause>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let limits = &self.l.cfg.limits;
        let checked = check_header_limits(
            req.headers(),
            limits.max_header_bytes,
            limits.max_header_count,
        )
        .and_then(|()| check_content_length(req.headers(), limits.max_body_bytes));
        if let Err(cause) = checked {
            return Box::pin(async move { Err(cause) });
        }
        Box::pin(self.inner.clone().oneshot(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn header_limits() {
        let mut h = HeaderMap::new();
        h.insert("a", HeaderValue::from_static("1"));
        h.insert("b", HeaderValue::from_static("2"));
        assert!(check_header_limits(&h, 100, 2).is_ok());
        assert_eq!(check_header_limits(&h, 100, 1), Err(Cause::HeadersTooLarge));
        assert_eq!(check_header_limits(&h, 11, 10), Err(Cause::HeadersTooLarge));
    }

    #[test]
    fn content_length() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("1001"));
        assert_eq!(
            check_content_length(&h, Some(1000)),
            Err(Cause::BodyTooLarge)
        );
        assert!(check_content_length(&h, Some(1001)).is_ok());
        assert!(check_content_length(&h, None).is_ok());
    }
}
