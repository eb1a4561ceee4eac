//! One OTLP export request of an already encoded body: OTLP/HTTP (`application/x-protobuf`)
//! or OTLP/gRPC (a unary call: the 5-byte message frame, the status in headers or trailers),
//! over hyper, TLS when the URL is `https://`. The app's pass-through forwards the bodies its
//! receiver took; tandem's own span export sends the bodies it encodes (`telemetry::encode`).
//!
//! Invariant: an answer is classified as the OTLP spec says a client must act on it: sent
//! (2xx; gRPC `OK`), worth retrying (429, 502, 503, 504, no answer in time, no connection; the
//! gRPC codes the spec lists as retryable), or refused for good (every other status).
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::time::timeout;

use super::{tls::ClientTls, tls::HttpVersion, Compression};

/// Bytes of an upstream's answer that are read (OTLP answers are tiny).
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How one request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    Sent,
    /// Worth sending again: why, and the delay the receiver asked for (`Retry-After`).
    Retry(String, Option<Duration>),
    /// Refused for good.
    Reject(String),
}

/// Where and how export requests go: one receiver, one protocol, its headers.
pub struct Poster {
    grpc: bool,
    url: Uri,
    headers: Vec<(HeaderName, HeaderValue)>,
    compression: Compression,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    attempt_timeout: Duration,
}

// === impl Poster ===

impl Poster {
    /// Requests to `url` (the full URL: OTLP/HTTP's `/v1/{signal}`, or gRPC's method path),
    /// gRPC when `grpc` (HTTP/2), else OTLP/HTTP; each answered within `attempt_timeout`.
    pub fn new(
        grpc: bool,
        url: Uri,
        headers: Vec<(HeaderName, HeaderValue)>,
        compression: Compression,
        tls: &ClientTls,
        attempt_timeout: Duration,
    ) -> Self {
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(30));
        let version = if grpc {
            builder.http2_only(true);
            HttpVersion::Http2
        } else {
            HttpVersion::Http1
        };
        // TLS for an `https://` URL, plain TCP for `http://`.
        let connector = tls.connector(version, attempt_timeout);
        Self {
            grpc,
            url,
            headers,
            compression,
            client: builder.build(connector),
            attempt_timeout,
        }
    }

    /// The URL requests go to.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// `body` made ready to send: gzipped when the receiver wants it compressed (once, however
    /// many times it is sent).
    pub fn prepare(&self, body: Bytes) -> Bytes {
        match self.compression {
            Compression::None => body,
            Compression::Gzip => gzip(&body),
        }
    }

    /// Send `body` (from [`Poster::prepare`]) once.
    pub async fn send(&self, body: Bytes) -> Attempt {
        let mut req = Request::post(self.url.clone());
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let gzipped = self.compression == Compression::Gzip;
        let req = if self.grpc {
            let req = req
                .header(header::CONTENT_TYPE, "application/grpc")
                .header(header::TE, "trailers");
            if gzipped {
                req.header("grpc-encoding", "gzip")
                    .body(Full::new(gzip_frame(&body)))
            } else {
                req.body(Full::new(frame(&body)))
            }
        } else {
            let req = req.header(header::CONTENT_TYPE, "application/x-protobuf");
            if gzipped {
                req.header(header::CONTENT_ENCODING, "gzip")
                    .body(Full::new(body))
            } else {
                req.body(Full::new(body))
            }
        };
        let req = match req {
            Ok(r) => r,
            Err(e) => return Attempt::Reject(format!("cannot build the request: {e}")),
        };
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("cannot reach the upstream: {e}"))?;
            let (parts, body) = resp.into_parts();
            let collected = http_body_util::Limited::new(body, MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| format!("reading the upstream's answer: {e}"))?;
            Ok::<_, String>((parts, collected.trailers().cloned()))
        };
        let (parts, trailers) = match timeout(self.attempt_timeout, exchange).await {
            Err(_) => return Attempt::Retry("the upstream did not answer in time".into(), None),
            Ok(Err(why)) => return Attempt::Retry(why, None),
            Ok(Ok(done)) => done,
        };
        let retry_after = parts
            .headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let status = parts.status;
        if self.grpc && status == StatusCode::OK {
            return match grpc_status(&parts.headers, trailers.as_ref()) {
                Some((0, _)) => Attempt::Sent,
                Some((code, msg)) if grpc_retryable(code) => {
                    Attempt::Retry(format!("gRPC status {code}: {msg}"), None)
                }
                Some((code, msg)) => Attempt::Reject(format!("gRPC status {code}: {msg}")),
                None => Attempt::Retry("the upstream's answer had no grpc-status".into(), None),
            };
        }
        match status.as_u16() {
            200..=299 if !self.grpc => Attempt::Sent,
            429 | 502 | 503 | 504 => Attempt::Retry(format!("HTTP {status}"), retry_after),
            _ => Attempt::Reject(format!("HTTP {status}")),
        }
    }
}

/// `body` gzipped (flate2's default level: OTLP protobuf shrinks several times over).
pub fn gzip(body: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 2),
        flate2::Compression::default(),
    );
    enc.write_all(body).expect("writing to a Vec cannot fail");
    Bytes::from(enc.finish().expect("writing to a Vec cannot fail"))
}

/// The gRPC codes after which the OTLP spec says a client may retry.
pub fn grpc_retryable(code: u32) -> bool {
    // CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE, UNAVAILABLE,
    // DATA_LOSS.
    matches!(code, 1 | 4 | 8 | 10 | 11 | 14 | 15)
}

/// `message` as one uncompressed gRPC frame.
pub fn frame(message: &[u8]) -> Bytes {
    framed(0, message)
}

/// An already gzipped `message` as one compressed gRPC frame (sent with `grpc-encoding: gzip`).
pub fn gzip_frame(gzipped: &[u8]) -> Bytes {
    framed(1, gzipped)
}

fn framed(compressed: u8, message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(compressed);
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}

/// The status of a finished gRPC call: from the trailers, or from the headers of a
/// trailers-only answer. None when neither carries one.
pub fn grpc_status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<(u32, String)> {
    let from = |h: &HeaderMap| {
        let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
        let msg = h
            .get("grpc-message")
            .and_then(|m| m.to_str().ok())
            .unwrap_or("")
            .to_string();
        Some((code, msg))
    };
    from(headers).or_else(|| trailers.and_then(from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let body = b"opentelemetry ".repeat(100);
        let z = gzip(&body);
        assert!(z.len() < body.len() / 4);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&z[..])
            .read_to_end(&mut back)
            .expect("gzip");
        assert_eq!(back, body);
    }
}
