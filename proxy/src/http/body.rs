//! The body of every response of the proxy: the app's (read by hyper's client or by tandem's
//! own HTTP/1 exchange) or one tandem made.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::http::h1::AppBody;
use crate::http::replay::BoxError;

/// The body of every response of the proxy. Not boxed: a box per response was a measurable
/// share of the proxy's CPU.
pub(crate) enum ProxyBody {
    /// The app's, as hyper's client read it (pooled connections, HTTP/2, TLS to the app).
    Pooled(Incoming),
    /// The app's, as tandem's own HTTP/1 exchange reads it (`http::h1`).
    Bound(AppBody),
    /// The app's, as hyper's client read it, its first frame already taken (see
    /// `upstream::prime`). Boxed: rare, and the other variants stay small.
    Primed(Box<(Option<Frame<Bytes>>, Incoming)>),
    /// One tandem made.
    Tandem(Full<Bytes>),
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Pooled(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(Into::into))),
            ProxyBody::Bound(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Primed(p) => match p.0.take() {
                Some(first) => Poll::Ready(Some(Ok(first))),
                None => Pin::new(&mut p.1)
                    .poll_frame(cx)
                    .map(|f| f.map(|f| f.map_err(Into::into))),
            },
            ProxyBody::Tandem(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Pooled(b) => b.is_end_stream(),
            ProxyBody::Bound(b) => b.is_end_stream(),
            ProxyBody::Primed(p) => p.0.is_none() && p.1.is_end_stream(),
            ProxyBody::Tandem(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Pooled(b) => b.size_hint(),
            ProxyBody::Bound(b) => b.size_hint(),
            ProxyBody::Primed(p) => {
                let first =
                    p.0.as_ref()
                        .and_then(Frame::data_ref)
                        .map_or(0, |d| d.len());
                let rest = p.1.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + first as u64);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + first as u64);
                }
                hint
            }
            ProxyBody::Tandem(b) => b.size_hint(),
        }
    }
}
