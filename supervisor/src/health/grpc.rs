//! The gRPC health probe: one unary `grpc.health.v1.Health/Check` call over HTTP/2 with prior
//! knowledge (h2c, what a plain-text gRPC server speaks), and the reading of its answer.
//!
//! Invariants: a check passes only when the HTTP status is 200, the call's `grpc-status` (from
//! the trailers, or the headers of a trailers-only answer) is 0 and the one response message
//! says SERVING; anything else, including whatever a broken or hostile server sends (a
//! truncated or oversized frame, a compressed one, a message that is not protobuf), is a
//! [`GrpcFailure`] naming the reason, never a panic. The connection lives inside the check's
//! future: dropping the future (the probe's timeout) closes it, no task is left behind.
//! Compression is never offered, so a compressed answer is a failure.

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use thiserror::Error;
use tokio::net::TcpStream;

use crate::http_get::display_addr;
use tandem_proxy::grpc_code_name as code_name;

/// The method the probe calls.
const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// Bound on the answer's body: a `HealthCheckResponse` is a few bytes.
const MAX_BODY: usize = 64 * 1024;

/// Bound on the answer's headers and trailers, as HTTP/2 counts them (hyper's default is
/// 16 MiB).
const MAX_HEADERS: u32 = 64 * 1024;

/// Bound on the `grpc-message` kept in a failure (it ends up on `/status` and in logs).
const MAX_MESSAGE: usize = 256;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `HealthCheckResponse.ServingStatus`, as the server sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServingStatus(pub i32);

impl ServingStatus {
    /// The one status that passes.
    pub const SERVING: ServingStatus = ServingStatus(1);
}

impl fmt::Display for ServingStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("UNKNOWN"),
            1 => f.write_str("SERVING"),
            2 => f.write_str("NOT_SERVING"),
            3 => f.write_str("SERVICE_UNKNOWN"),
            n => write!(f, "status {n}"),
        }
    }
}

/// Why a gRPC health check failed (a refused TCP connection and the timeout are the probe's
/// own failures).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum GrpcFailure {
    /// The HTTP/2 exchange broke: handshake, request, or the body cut short.
    #[error("grpc to {addr}: {reason}")]
    Exchange { addr: String, reason: String },
    /// An HTTP status other than 200 (a server that is not gRPC, or a proxy in the way).
    #[error("grpc to {addr}: HTTP {status}")]
    HttpStatus { addr: String, status: u16 },
    /// The call failed: `grpc-status` is not 0 (5 NOT_FOUND: the service is unknown to the
    /// server; 12 UNIMPLEMENTED: the server has no health service).
    #[error("grpc-status {code} ({}): {message}", code_name(*.code))]
    Status { code: u32, message: String },
    /// The call succeeded and the service is not SERVING.
    #[error("grpc health {status}{}", for_service(.service))]
    NotServing {
        status: ServingStatus,
        service: String,
    },
    /// The answer is not a well-formed gRPC health answer.
    #[error("grpc to {addr}: malformed answer: {reason}")]
    Malformed { addr: String, reason: String },
}

fn for_service(service: &str) -> String {
    if service.is_empty() {
        String::new()
    } else {
        format!(" (service {service:?})")
    }
}

/// The request body: `HealthCheckRequest { service }` in one uncompressed gRPC frame.
pub fn request_body(service: &str) -> Bytes {
    let message = HealthCheckRequest {
        service: service.to_string(),
    }
    .encode_to_vec();
    let mut body = Vec::with_capacity(5 + message.len());
    body.push(0);
    body.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    body.extend_from_slice(&message);
    Bytes::from(body)
}

/// The serving status in a response body: exactly one uncompressed gRPC frame holding a
/// `HealthCheckResponse`. Errors name what is wrong, for [`GrpcFailure::Malformed`].
pub fn decode_response(body: &[u8]) -> Result<ServingStatus, String> {
    let Some((head, rest)) = body.split_first_chunk::<5>() else {
        return Err(format!(
            "the message frame is truncated ({} bytes)",
            body.len()
        ));
    };
    match head[0] {
        0 => {}
        1 => return Err("the message is compressed, which the probe did not offer".into()),
        flag => return Err(format!("bad compressed-flag byte {flag}")),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let Some(message) = rest.get(..len) else {
        return Err(format!(
            "the message frame is truncated ({} of {len} bytes)",
            rest.len()
        ));
    };
    if rest.len() > len {
        return Err(format!(
            "{} bytes after the one message of a unary answer",
            rest.len() - len
        ));
    }
    HealthCheckResponse::decode(message)
        .map(|r| ServingStatus(r.status))
        .map_err(|e| format!("not a HealthCheckResponse: {e}"))
}

/// The call's status: `grpc-status` and the percent-decoded `grpc-message`, from the trailers,
/// or from the headers of a trailers-only answer. None when neither carries a readable one.
fn call_status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<(u32, String)> {
    let from = |h: &HeaderMap| {
        let code = h.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
        let raw = h.get("grpc-message").map_or(&b""[..], |m| m.as_bytes());
        let mut message = percent_encoding::percent_decode(raw)
            .decode_utf8_lossy()
            .into_owned();
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push_str("...");
        }
        Some((code, message))
    };
    trailers.and_then(from).or_else(|| from(headers))
}

/// What an answer (status, headers, body, trailers) says: Ok only for SERVING.
pub fn verdict(
    addr: &str,
    service: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    trailers: Option<&HeaderMap>,
) -> Result<(), GrpcFailure> {
    if status != StatusCode::OK {
        return Err(GrpcFailure::HttpStatus {
            addr: addr.to_string(),
            status: status.as_u16(),
        });
    }
    let malformed = |reason: String| GrpcFailure::Malformed {
        addr: addr.to_string(),
        reason,
    };
    match call_status(headers, trailers) {
        None => {
            return Err(malformed(
                "no grpc-status in the trailers or headers".into(),
            ))
        }
        Some((0, _)) => {}
        Some((code, message)) => return Err(GrpcFailure::Status { code, message }),
    }
    match decode_response(body).map_err(malformed)? {
        ServingStatus::SERVING => Ok(()),
        other => Err(GrpcFailure::NotServing {
            status: other,
            service: service.to_string(),
        }),
    }
}

/// Calls `Health/Check` for `service` on the HTTP/2 connection `tcp` to `host:port`. Unbounded
/// in time: the caller bounds it.
pub async fn check(
    tcp: TcpStream,
    host: &str,
    port: u16,
    service: &str,
) -> Result<(), GrpcFailure> {
    let addr = display_addr(host, port);
    let exchange = |reason: String| GrpcFailure::Exchange {
        addr: addr.clone(),
        reason,
    };
    let _ = tcp.set_nodelay(true);
    let uri: Uri = format!("http://{addr}{CHECK_PATH}")
        .parse()
        .map_err(|e| exchange(format!("bad URI: {e}")))?;
    let req = Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .header(http::header::USER_AGENT, "tandem-probe")
        .body(Full::new(request_body(service)))
        .map_err(|e| exchange(format!("request: {e}")))?;
    let (mut tx, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .max_header_list_size(MAX_HEADERS)
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| exchange(format!("HTTP/2 handshake: {e}")))?;
    let call = async {
        let resp = tx
            .send_request(req)
            .await
            .map_err(|e| exchange(format!("request: {e}")))?;
        let (parts, body) = resp.into_parts();
        if parts.status != StatusCode::OK {
            // No need to read what a non-gRPC answer carries.
            return verdict(&addr, service, parts.status, &parts.headers, &[], None);
        }
        let collected = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| exchange(format!("response body: {e}")))?;
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        verdict(
            &addr,
            service,
            parts.status,
            &parts.headers,
            &body,
            trailers.as_ref(),
        )
    };
    // The connection is driven here, beside the call, and dropped with it.
    tokio::pin!(call, conn);
    tokio::select! {
        biased;
        verdict = &mut call => verdict,
        ended = &mut conn => match ended {
            // Closed cleanly: the call finishes or fails on its own.
            Ok(()) => call.await,
            Err(e) => Err(exchange(format!("connection: {e}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn frame(message: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&(message.len() as u32).to_be_bytes());
        f.extend_from_slice(message);
        f
    }

    fn grpc_status(code: u32, message: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from(code));
        if !message.is_empty() {
            h.insert(
                "grpc-message",
                HeaderValue::from_str(message).expect("ascii"),
            );
        }
        h
    }

    /// What the in-process server answers.
    #[derive(Clone, Copy)]
    enum Answer {
        /// A message with this serving status, then `grpc-status: 0` in the trailers.
        Status(i32),
        /// Trailers-only: `grpc-status` in the headers, no body.
        Code(u32),
        /// A frame cut short, then `grpc-status: 0`.
        Truncated,
    }

    /// An h2c server on 127.0.0.1 answering every call with `answer`; checks the request.
    async fn server(answer: Answer) -> u16 {
        use hyper::service::service_fn;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    assert_eq!(req.uri().path(), CHECK_PATH);
                    assert_eq!(req.headers()["content-type"], "application/grpc");
                    assert_eq!(req.headers()["te"], "trailers");
                    let body = req.into_body().collect().await?.to_bytes();
                    assert_eq!(body, request_body("svc"));
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from(0u32));
                    let (head, data) = match answer {
                        Answer::Status(s) => (HeaderMap::new(), frame(&[0x08, s as u8])),
                        Answer::Code(c) => (grpc_status(c, "no%20such%20method"), Vec::new()),
                        Answer::Truncated => (HeaderMap::new(), frame(&[0x08, 1])[..4].to_vec()),
                    };
                    let trailers_only = matches!(answer, Answer::Code(_));
                    let body = Full::new(Bytes::from(data))
                        .with_trailers(async move { (!trailers_only).then_some(Ok(trailers)) });
                    let mut resp = http::Response::new(body);
                    *resp.headers_mut() = head;
                    resp.headers_mut()
                        .insert("content-type", HeaderValue::from_static("application/grpc"));
                    Ok::<_, hyper::Error>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        port
    }

    async fn call(port: u16) -> Result<(), GrpcFailure> {
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        check(tcp, "127.0.0.1", port, "svc").await
    }

    #[tokio::test]
    async fn a_call_over_h2c_passes_only_on_serving() {
        assert_eq!(call(server(Answer::Status(1)).await).await, Ok(()));
        assert_eq!(
            call(server(Answer::Status(2)).await).await,
            Err(GrpcFailure::NotServing {
                status: ServingStatus(2),
                service: "svc".into()
            })
        );
        assert_eq!(
            call(server(Answer::Code(12)).await).await,
            Err(GrpcFailure::Status {
                code: 12,
                message: "no such method".into()
            })
        );
        let e = call(server(Answer::Truncated).await)
            .await
            .expect_err("truncated");
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_is_not_grpc_is_a_failure() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let e = call(port).await.expect_err("HTTP/1 is not gRPC");
        assert!(matches!(e, GrpcFailure::Exchange { .. }), "{e}");
    }

    #[test]
    fn the_request_is_one_frame_of_a_hand_encoded_health_check_request() {
        assert_eq!(&request_body("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &request_body("foo")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'f', b'o', b'o']
        );
    }

    #[test]
    fn hand_made_frames_decode_to_their_serving_status() {
        // field 1, varint: 0x08 then the value.
        assert_eq!(decode_response(&frame(&[0x08, 1])), Ok(ServingStatus(1)));
        assert_eq!(decode_response(&frame(&[0x08, 2])), Ok(ServingStatus(2)));
        assert_eq!(decode_response(&frame(&[0x08, 3])), Ok(ServingStatus(3)));
        // An empty message is the default: UNKNOWN.
        assert_eq!(decode_response(&frame(&[])), Ok(ServingStatus(0)));
        // Unknown fields are skipped, as protobuf requires.
        assert_eq!(
            decode_response(&frame(&[0x12, 1, b'x', 0x08, 1])),
            Ok(ServingStatus::SERVING)
        );
        assert_eq!(ServingStatus(2).to_string(), "NOT_SERVING");
    }

    #[test]
    fn truncated_and_odd_frames_are_errors_not_panics() {
        let whole = frame(&[0x08, 1]);
        for cut in 0..whole.len() {
            let e = decode_response(&whole[..cut]).expect_err("truncated");
            assert!(e.contains("truncated"), "{cut}: {e}");
        }
        let mut compressed = whole.clone();
        compressed[0] = 1;
        assert!(decode_response(&compressed)
            .expect_err("compressed")
            .contains("compressed"));
        let mut extra = whole.clone();
        extra.push(0);
        assert!(decode_response(&extra).is_err());
        // A length of 4 GiB claims more than there is.
        assert!(decode_response(&[0, 0xff, 0xff, 0xff, 0xff, 0x08]).is_err());
        // A varint that never ends is not a message.
        assert!(decode_response(&frame(&[0x08, 0xff, 0xff]))
            .expect_err("bad varint")
            .contains("HealthCheckResponse"));
    }

    #[test]
    fn verdict_reads_status_from_trailers_or_a_trailers_only_answer() {
        let ok = StatusCode::OK;
        let none = HeaderMap::new();
        let serving = frame(&[0x08, 1]);
        let not_serving = frame(&[0x08, 2]);
        assert_eq!(
            verdict("a:1", "", ok, &none, &serving, Some(&grpc_status(0, ""))),
            Ok(())
        );
        let e = verdict(
            "a:1",
            "",
            ok,
            &none,
            &not_serving,
            Some(&grpc_status(0, "")),
        )
        .expect_err("not serving");
        assert_eq!(e.to_string(), "grpc health NOT_SERVING");
        let e = verdict(
            "a:1",
            "db",
            ok,
            &none,
            &not_serving,
            Some(&grpc_status(0, "")),
        )
        .expect_err("not serving");
        assert_eq!(e.to_string(), "grpc health NOT_SERVING (service \"db\")");
        // Trailers-only: the status in the headers, no body.
        let e = verdict(
            "a:1",
            "",
            ok,
            &grpc_status(12, "Method%20not%20found"),
            &[],
            None,
        )
        .expect_err("unimplemented");
        assert_eq!(
            e.to_string(),
            "grpc-status 12 (UNIMPLEMENTED): Method not found"
        );
        let e = verdict(
            "a:1",
            "x",
            ok,
            &none,
            &[],
            Some(&grpc_status(5, "unknown service")),
        )
        .expect_err("not found");
        assert!(
            e.to_string().starts_with("grpc-status 5 (NOT_FOUND)"),
            "{e}"
        );
        let e = verdict("a:1", "", ok, &none, &serving, None).expect_err("no status");
        assert!(e.to_string().contains("no grpc-status"), "{e}");
        let e = verdict("a:1", "", StatusCode::NOT_FOUND, &none, &[], None).expect_err("http");
        assert_eq!(
            e,
            GrpcFailure::HttpStatus {
                addr: "a:1".into(),
                status: 404
            }
        );
        let e = verdict(
            "a:1",
            "",
            ok,
            &none,
            &serving[..3],
            Some(&grpc_status(0, "")),
        )
        .expect_err("truncated");
        assert!(matches!(e, GrpcFailure::Malformed { .. }), "{e}");
    }
}
