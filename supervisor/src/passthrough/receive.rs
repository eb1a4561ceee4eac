//! The app-facing side: one hyper server per listener that speaks OTLP/gRPC (HTTP/2,
//! `content-type: application/grpc`) and OTLP/HTTP (`POST /v1/{traces,logs,metrics}`,
//! protobuf or JSON) on the same port, so an SDK pointed at either port works.
//!
//! It answers as soon as a request is decoded, enriched and queued: the app never waits for
//! the upstream. Every answer follows the OTLP spec, so SDKs retry what can be retried.
use std::{collections::BTreeMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use prost::Message;
use tokio::{net::TcpListener, sync::watch};

use super::{
    counters::{Counters, Drop},
    forward::{Queue, Refused},
    grpc::{self, code, GrpcBody},
    signal::Encoding,
    Signal,
};

/// How long an SDK is asked to wait before retrying a request refused for a full queue.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What every connection shares.
pub struct Receiver {
    pub attrs: BTreeMap<String, String>,
    /// One queue per signal.
    pub queues: Vec<(Signal, Queue)>,
    pub max_request: usize,
    pub counters: Counters,
}

/// An answer before it is shaped for gRPC or HTTP.
struct Refusal {
    grpc: u32,
    http: StatusCode,
    message: String,
    retry_after: Option<Duration>,
}

// === impl Receiver ===

impl Receiver {
    fn queue(&self, s: Signal) -> Option<&Queue> {
        self.queues.iter().find(|(q, _)| *q == s).map(|(_, q)| q)
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<GrpcBody> {
        let is_grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/grpc"));
        if is_grpc {
            self.handle_grpc(req).await
        } else {
            self.handle_http(req).await
        }
    }

    async fn handle_grpc(&self, req: Request<Incoming>) -> Response<GrpcBody> {
        let Some(signal) = Signal::from_grpc_path(req.uri().path()) else {
            let msg = format!("unknown method {}", req.uri().path());
            return grpc_answer(code::UNIMPLEMENTED, &msg, None);
        };
        self.counters.received(signal);
        if req
            .headers()
            .get("grpc-encoding")
            .is_some_and(|v| v != "identity")
        {
            self.counters.dropped(signal, Drop::Malformed, 1);
            let msg =
                "compressed gRPC messages are not supported (unset the exporter's compression)";
            return grpc_answer(code::UNIMPLEMENTED, msg, None);
        }
        let body = match self.read_body(signal, req.into_body()).await {
            Ok(b) => b,
            Err(r) => return grpc_answer(r.grpc, &r.message, r.retry_after),
        };
        let message = match grpc::unframe(&body) {
            Ok(m) => m,
            Err(e) => {
                self.counters.dropped(signal, Drop::Malformed, 1);
                return grpc_answer(code::INVALID_ARGUMENT, &e.to_string(), None);
            }
        };
        match self.accept(signal, message, Encoding::Protobuf) {
            // An empty Export*ServiceResponse encodes to no bytes.
            Ok(()) => Response::builder()
                .header(header::CONTENT_TYPE, "application/grpc")
                .body(GrpcBody::ok(&[]))
                .unwrap_or_default(),
            Err(r) => grpc_answer(r.grpc, &r.message, r.retry_after),
        }
    }

    async fn handle_http(&self, req: Request<Incoming>) -> Response<GrpcBody> {
        let Some(signal) = Signal::from_http_path(req.uri().path()) else {
            return plain(
                StatusCode::NOT_FOUND,
                "OTLP/HTTP paths: /v1/traces, /v1/logs, /v1/metrics",
            );
        };
        if req.method() != Method::POST {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "OTLP/HTTP takes POST");
        }
        self.counters.received(signal);
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let encoding = if content_type.starts_with("application/json") {
            Encoding::Json
        } else if content_type.starts_with("application/x-protobuf") || content_type.is_empty() {
            Encoding::Protobuf
        } else {
            self.counters.dropped(signal, Drop::Malformed, 1);
            return http_error(
                Encoding::Protobuf,
                &Refusal {
                    grpc: code::INVALID_ARGUMENT,
                    http: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    message: format!("content-type {content_type:?}: OTLP/HTTP takes application/x-protobuf or application/json"),
                    retry_after: None,
                },
            );
        };
        if req
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v != "identity")
        {
            self.counters.dropped(signal, Drop::Malformed, 1);
            return http_error(
                encoding,
                &Refusal {
                    grpc: code::INVALID_ARGUMENT,
                    http: StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    message:
                        "compressed bodies are not supported (unset the exporter's compression)"
                            .into(),
                    retry_after: None,
                },
            );
        }
        let body = match self.read_body(signal, req.into_body()).await {
            Ok(b) => b,
            Err(r) => return http_error(encoding, &r),
        };
        match self.accept(signal, &body, encoding) {
            Ok(()) => {
                let (ct, body) = match encoding {
                    Encoding::Json => ("application/json", Bytes::from_static(b"{}")),
                    Encoding::Protobuf => ("application/x-protobuf", Bytes::new()),
                };
                Response::builder()
                    .header(header::CONTENT_TYPE, ct)
                    .body(GrpcBody::bytes(body))
                    .unwrap_or_default()
            }
            Err(r) => http_error(encoding, &r),
        }
    }

    /// Read the body, up to `max_request` bytes.
    async fn read_body(&self, signal: Signal, body: Incoming) -> Result<Bytes, Refusal> {
        match http_body_util::Limited::new(body, self.max_request)
            .collect()
            .await
        {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) => {
                let too_large = e
                    .downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some();
                let (why, message) = if too_large {
                    (
                        Drop::TooLarge,
                        format!(
                            "the request is larger than telemetry.passthrough.max_request_size ({} bytes)",
                            self.max_request
                        ),
                    )
                } else {
                    (Drop::Malformed, format!("cannot read the request: {e}"))
                };
                self.counters.dropped(signal, why, 1);
                Err(Refusal {
                    grpc: code::INVALID_ARGUMENT,
                    http: if too_large {
                        StatusCode::PAYLOAD_TOO_LARGE
                    } else {
                        StatusCode::BAD_REQUEST
                    },
                    message,
                    retry_after: None,
                })
            }
        }
    }

    /// Decode, enrich and queue one request.
    fn accept(&self, signal: Signal, body: &[u8], encoding: Encoding) -> Result<(), Refusal> {
        let enriched = match signal.enrich(body, encoding, &self.attrs) {
            Ok(b) => b,
            Err(e) => {
                self.counters.dropped(signal, Drop::Malformed, 1);
                return Err(Refusal {
                    grpc: code::INVALID_ARGUMENT,
                    http: StatusCode::BAD_REQUEST,
                    message: e.to_string(),
                    retry_after: None,
                });
            }
        };
        let Some(queue) = self.queue(signal) else {
            return Ok(());
        };
        match queue.try_push(enriched) {
            Ok(()) => Ok(()),
            Err(Refused::Full) => {
                self.counters.dropped(signal, Drop::QueueFull, 1);
                Err(Refusal {
                    grpc: code::RESOURCE_EXHAUSTED,
                    http: StatusCode::TOO_MANY_REQUESTS,
                    message: format!("tandem's {} queue is full; retry later", signal.as_str()),
                    retry_after: Some(RETRY_AFTER),
                })
            }
            Err(Refused::Stopping) => {
                self.counters.dropped(signal, Drop::Stopping, 1);
                Err(Refusal {
                    grpc: code::UNAVAILABLE,
                    http: StatusCode::SERVICE_UNAVAILABLE,
                    message: "tandem is stopping".into(),
                    retry_after: Some(RETRY_AFTER),
                })
            }
        }
    }
}

fn grpc_answer(code: u32, message: &str, retry_after: Option<Duration>) -> Response<GrpcBody> {
    let mut resp = Response::new(GrpcBody::empty());
    *resp.headers_mut() = grpc::status_headers(code, message, retry_after);
    resp
}

fn plain(status: StatusCode, message: &str) -> Response<GrpcBody> {
    let mut resp = Response::new(GrpcBody::bytes(format!("{message}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An OTLP/HTTP error: a `google.rpc.Status` in the request's encoding, and `Retry-After`
/// when the client should come back.
fn http_error(encoding: Encoding, r: &Refusal) -> Response<GrpcBody> {
    let (ct, body) = match encoding {
        Encoding::Protobuf => (
            "application/x-protobuf",
            Bytes::from(
                grpc::RpcStatus {
                    code: r.grpc as i32,
                    message: r.message.clone(),
                    details: Vec::new(),
                }
                .encode_to_vec(),
            ),
        ),
        Encoding::Json => (
            "application/json",
            Bytes::from(serde_json::json!({"code": r.grpc, "message": r.message}).to_string()),
        ),
    };
    let mut resp = Response::new(GrpcBody::bytes(body));
    *resp.status_mut() = r.http;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    if let Some(after) = r.retry_after {
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from(after.as_secs().max(1)),
        );
    }
    resp
}

/// Accept connections on `listener` until `stop` turns true; connections then finish their
/// requests and close.
pub async fn serve(
    listener: TcpListener,
    receiver: Arc<Receiver>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off a little rather than spin.
                    tracing::warn!(event = "otlp_passthrough_accept_failed", error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { let _ = stop.wait_for(|s| *s).await; } => return,
        };
        let receiver = receiver.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let receiver = receiver.clone();
                async move { Ok::<_, Infallible>(receiver.handle(req).await) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = async { let _ = stop.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
