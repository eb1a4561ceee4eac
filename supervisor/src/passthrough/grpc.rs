//! Just enough gRPC for OTLP's unary `Export` calls, on hyper, the receiving side (the sending side
//! is `otlp::post`): the 5-byte message frame, the status in headers or trailers, and `RetryInfo`
//! so an SDK backs off when tandem's queue is full.
//!
//! Compressed messages (`grpc-encoding: gzip`) are refused with UNIMPLEMENTED: tandem removes
//! `OTEL_EXPORTER_OTLP_COMPRESSION` from the app's environment, so an SDK only sends them when
//! its code asks for compression explicitly.
use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use prost::Message;

/// gRPC status codes tandem sends or acts on.
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const UNAVAILABLE: u32 = 14;
}

pub use crate::otlp::post::frame;

/// Why a gRPC body could not be unframed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("the gRPC message frame is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("compressed gRPC messages are not supported (unset the exporter's compression)")]
    Compressed,
}

/// The one message of a unary call's body.
pub fn unframe(body: &[u8]) -> Result<&[u8], FrameError> {
    let Some((head, rest)) = body.split_first_chunk::<5>() else {
        return Err(FrameError::Truncated(body.len()));
    };
    if head[0] != 0 {
        return Err(FrameError::Compressed);
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    rest.get(..len).ok_or(FrameError::Truncated(body.len()))
}

/// Headers of a trailers-only answer with `code` and `message` (and a `RetryInfo` detail when
/// `retry_after` is set).
pub fn status_headers(code: u32, message: &str, retry_after: Option<Duration>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if !message.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
            h.insert("grpc-message", v);
        }
    }
    if let Some(delay) = retry_after {
        let details = RpcStatus {
            code: code as i32,
            message: message.to_string(),
            details: vec![ProtoAny {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: RetryInfo {
                    retry_delay: Some(ProtoDuration {
                        seconds: delay.as_secs() as i64,
                        nanos: delay.subsec_nanos() as i32,
                    }),
                }
                .encode_to_vec(),
            }],
        };
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode(details.encode_to_vec());
        if let Ok(v) = HeaderValue::from_str(&b64) {
            h.insert("grpc-status-details-bin", v);
        }
    }
    h
}

/// grpc-message is percent-encoded (the gRPC HTTP/2 spec): printable ASCII but '%' as is.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `google.rpc.Status`: the body of an OTLP/HTTP error and gRPC's status details.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

/// `google.protobuf.Any`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

/// A response body: at most one data frame, then the trailers (gRPC's status).
#[derive(Debug, Default)]
pub struct GrpcBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

// === impl GrpcBody ===

impl GrpcBody {
    /// A successful unary answer: `message` framed, then `grpc-status: 0`.
    pub fn ok(message: &[u8]) -> Self {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from(code::OK));
        Self {
            data: Some(frame(message)),
            trailers: Some(trailers),
        }
    }

    /// A body with no frames (trailers-only answers and plain HTTP ones).
    pub fn empty() -> Self {
        Self::default()
    }

    /// A plain body (OTLP/HTTP answers).
    pub fn bytes(data: impl Into<Bytes>) -> Self {
        Self {
            data: Some(data.into()),
            trailers: None,
        }
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.trailers) {
            (Some(d), None) => SizeHint::with_exact(d.len() as u64),
            (None, None) => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::post::grpc_status as status;

    #[test]
    fn frames_round_trip_and_bad_frames_are_errors() {
        let f = frame(b"abc");
        assert_eq!(unframe(&f).unwrap(), b"abc");
        assert!(matches!(unframe(b"\0\0"), Err(FrameError::Truncated(2))));
        assert!(matches!(
            unframe(b"\0\0\0\0\x09abc"),
            Err(FrameError::Truncated(8))
        ));
        assert!(matches!(
            unframe(b"\x01\0\0\0\x01a"),
            Err(FrameError::Compressed)
        ));
    }

    #[test]
    fn status_is_read_from_headers_or_trailers() {
        let h = status_headers(code::RESOURCE_EXHAUSTED, "queue 100% full", None);
        assert_eq!(h["grpc-message"], "queue 100%25 full");
        assert_eq!(status(&h, None), Some((8, "queue 100%25 full".into())));
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from(0u32));
        assert_eq!(
            status(&HeaderMap::new(), Some(&t)),
            Some((0, String::new()))
        );
        assert_eq!(status(&HeaderMap::new(), None), None);
    }
}
