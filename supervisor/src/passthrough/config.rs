//! `[telemetry.passthrough]`: the section as written, and its checked form
//! ([`CheckedPassthrough`]: listen addresses parsed, each signal's upstream resolved, its TLS
//! files read), made once when tandem's config is loaded.
//!
//! Pure: nothing here binds or connects, so the config check may call
//! [`PassthroughConfig::check`]; [`super::Passthrough::start`] binds what it returns.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use super::{upstream, Signal};

/// `[telemetry.passthrough]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassthroughConfig {
    /// Listen on `grpc_listen` and `http_listen` and point the app's
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` there.
    pub enabled: bool,
    /// The OTLP/gRPC listener (it answers OTLP/HTTP too).
    pub grpc_listen: String,
    /// The OTLP/HTTP listener (it answers OTLP/gRPC too).
    pub http_listen: String,
    /// What the app is told to speak (`OTEL_EXPORTER_OTLP_PROTOCOL`): `http/protobuf` (the
    /// OTLP default, endpoint `http_listen`) or `grpc` (endpoint `grpc_listen`).
    pub app_protocol: String,
    /// The upstream's base URL (`http://collector:4318`); empty: tandem's own
    /// `OTEL_EXPORTER_OTLP_[SIGNAL_]ENDPOINT`.
    pub endpoint: String,
    /// `grpc` or `http/protobuf`; empty: `OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL`, else
    /// `http/protobuf`.
    pub protocol: String,
    /// Headers sent upstream, over `OTEL_EXPORTER_OTLP_[SIGNAL_]HEADERS`.
    pub headers: BTreeMap<String, String>,
    /// PEM CA bundle an `https://` upstream must chain to; empty:
    /// `OTEL_EXPORTER_OTLP_[SIGNAL_]CERTIFICATE`, else the built-in Mozilla roots.
    pub ca_file: String,
    /// PEM client certificate chain for mTLS; empty:
    /// `OTEL_EXPORTER_OTLP_[SIGNAL_]CLIENT_CERTIFICATE`.
    pub cert_file: String,
    /// PEM private key of `cert_file`; empty: `OTEL_EXPORTER_OTLP_[SIGNAL_]CLIENT_KEY`.
    pub key_file: String,
    /// `none` or `gzip` for requests upstream; empty: `OTEL_EXPORTER_OTLP_[SIGNAL_]COMPRESSION`,
    /// else `none`.
    pub compression: String,
    /// Larger requests are refused (413 / INVALID_ARGUMENT).
    pub max_request_size: ByteSize,
    /// Bytes queued per signal while the upstream is slow or down; beyond: 429.
    pub queue_size: ByteSize,
    /// One attempt at the upstream.
    #[serde(with = "tandem_proxy::duration")]
    pub timeout: Duration,
    /// How long one request is retried before it is dropped (and counted).
    #[serde(with = "tandem_proxy::duration")]
    pub max_retry_time: Duration,
    /// At exit: how long what is queued may take to be forwarded.
    #[serde(with = "tandem_proxy::duration")]
    pub shutdown_timeout: Duration,
}

impl Default for PassthroughConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            grpc_listen: "127.0.0.1:4317".into(),
            http_listen: "127.0.0.1:4318".into(),
            app_protocol: "http/protobuf".into(),
            endpoint: String::new(),
            protocol: String::new(),
            headers: BTreeMap::new(),
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
            compression: String::new(),
            max_request_size: ByteSize::mib(4),
            queue_size: ByteSize::mib(16),
            timeout: Duration::from_secs(10),
            max_retry_time: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// An OTLP protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub(super) fn parse(s: &str) -> Result<Protocol, String> {
        match s {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            "http/json" => Err(
                "\"http/json\" is not supported upstream; use \"http/protobuf\" or \"grpc\"".into(),
            ),
            other => Err(format!(
                "{other:?} is not an OTLP protocol (grpc or http/protobuf)"
            )),
        }
    }

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// A pass-through config that cannot work, naming the key (or variable).
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("telemetry.passthrough.{key}: {reason}")]
    Config { key: &'static str, reason: String },
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    #[error("telemetry.passthrough.{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl PassthroughError {
    /// Whether the user must change the config (exit 64) rather than the host.
    pub fn is_config(&self) -> bool {
        !matches!(self, PassthroughError::Bind { .. })
    }
}

// === impl PassthroughConfig ===

impl PassthroughConfig {
    /// The checked form, once, at config load: listen addresses parsed, the app's protocol,
    /// and each signal's upstream resolved with `env` (tandem's environment; TLS files read).
    /// None when the pass-through is off.
    pub fn check(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<CheckedPassthrough>, PassthroughError> {
        if !self.enabled {
            return Ok(None);
        }
        let [grpc_listen, http_listen] = self.listen_addrs()?;
        let app_protocol =
            Protocol::parse(&self.app_protocol).map_err(|reason| PassthroughError::Config {
                key: "app_protocol",
                reason,
            })?;
        if self.max_request_size.as_u64() > self.queue_size.as_u64() {
            return Err(PassthroughError::Config {
                key: "max_request_size",
                reason: format!(
                    "{} is larger than queue_size ({}): such a request could never be queued",
                    self.max_request_size, self.queue_size
                ),
            });
        }
        if self.queue_size.as_u64() > u64::from(u32::MAX) {
            return Err(PassthroughError::Config {
                key: "queue_size",
                reason: "at most 4 GiB".into(),
            });
        }
        let mut upstreams = Vec::new();
        for s in Signal::ALL {
            let up = upstream::resolve(s, self, env, &[grpc_listen, http_listen])?;
            upstreams.push((s, up));
        }
        Ok(Some(CheckedPassthrough {
            grpc_listen,
            http_listen,
            app_protocol,
            upstreams,
        }))
    }

    fn listen_addrs(&self) -> Result<[SocketAddr; 2], PassthroughError> {
        let parse = |key: &'static str, v: &str| {
            let addr: SocketAddr = v.trim().parse().map_err(|_| PassthroughError::Config {
                key,
                reason: format!("{v:?} is not an IP:PORT address"),
            })?;
            if !addr.ip().is_loopback() {
                // Anyone who can reach it could write into the app's telemetry.
                return Err(PassthroughError::Config {
                    key,
                    reason: format!(
                        "{addr} is not a loopback address; the receiver has no authentication"
                    ),
                });
            }
            Ok(addr)
        };
        Ok([
            parse("grpc_listen", &self.grpc_listen)?,
            parse("http_listen", &self.http_listen)?,
        ])
    }
}

/// `[telemetry.passthrough]`, checked: what [`Passthrough::start`] binds and forwards to.
#[derive(Debug, Clone)]
pub struct CheckedPassthrough {
    /// `grpc_listen`, parsed (loopback).
    pub grpc_listen: SocketAddr,
    /// `http_listen`, parsed (loopback).
    pub http_listen: SocketAddr,
    /// What the app is told to speak.
    pub app_protocol: Protocol,
    /// Each signal's upstream, resolved.
    pub upstreams: Vec<(Signal, upstream::Upstream)>,
}
