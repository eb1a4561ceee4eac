//! # OTLP pass-through
//!
//! A second product inside tandem, apart from tandem's own export ([`crate::telemetry`]): the
//! job of an OpenTelemetry Collector sidecar for an app that is already instrumented. With
//! `[telemetry.passthrough] enabled = true`, tandem listens on 127.0.0.1:4317 (gRPC) and
//! 127.0.0.1:4318 (HTTP), points the app's `OTEL_EXPORTER_OTLP_ENDPOINT` there (unless
//! `app.env` sets it), adds its resource attributes to everything the app sends and forwards it
//! to the upstream (`[telemetry.passthrough] endpoint`, else tandem's own
//! `OTEL_EXPORTER_OTLP_*`).
//!
//! The flow: [`receive`] (answer the app at once) ─▶ [`signal`] (decode, enrich) ─▶
//! [`forward`] (bounded queue per signal, retry with backoff) ─▶ the upstream ([`upstream`],
//! framed by [`grpc`] or plain HTTP). [`counters`] are its `tandem_otlp_passthrough_*` metrics.
//!
//! What it shares with tandem's export lives in [`crate::otlp`] (the `OTEL_*` environment, the
//! TLS client, the resource). It depends on nothing else in tandem: the resource comes in as
//! plain data, and [`crate::telemetry`] only holds its config section ([`PassthroughConfig`],
//! `[telemetry.passthrough]`, in [`config`] with its checked form, which tandem's config check
//! makes).
//!
//! The one thing to keep: the app never waits on the upstream; what cannot be queued or
//! forwarded is counted ([`counters`]), never lost silently.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch, task::JoinSet, time::timeout};

pub mod config;
mod counters;
mod forward;
mod grpc;
mod receive;
mod signal;
mod upstream;

pub use config::{CheckedPassthrough, PassthroughConfig, PassthroughError, Protocol};
pub use signal::Signal;

/// The running pass-through.
pub struct Passthrough {
    /// The endpoint and protocol the app is told.
    app_endpoint: String,
    app_protocol: Protocol,
    stop: watch::Sender<bool>,
    servers: JoinSet<()>,
    forwarders: JoinSet<()>,
    queues: Vec<(Signal, forward::Queue)>,
    counters: counters::Counters,
    shutdown_timeout: Duration,
    /// Copies of the listening sockets (see [`Passthrough::listening_sockets`]).
    sockets: Vec<(&'static str, std::os::fd::OwnedFd)>,
}

/// Variables of tandem's environment that would send the app's telemetry around tandem (or
/// make it compress or use TLS to it): not inherited by the app unless `app.env` sets them.
fn bypassing_vars() -> Vec<String> {
    let mut out = Vec::new();
    for signal in ["", "TRACES_", "LOGS_", "METRICS_"] {
        for what in [
            "ENDPOINT",
            "PROTOCOL",
            "HEADERS",
            "COMPRESSION",
            "CERTIFICATE",
            "CLIENT_KEY",
            "CLIENT_CERTIFICATE",
            "INSECURE",
        ] {
            out.push(format!("OTEL_EXPORTER_OTLP_{signal}{what}"));
        }
    }
    out
}

// === impl Passthrough ===

impl Passthrough {
    /// Bind both listeners of `checked` (from [`PassthroughConfig::check`]), register the
    /// counters and start forwarding; `resource` is added to everything the app sends
    /// ([`crate::otlp::resource::of_process`]).
    pub async fn start(
        cfg: &PassthroughConfig,
        checked: &CheckedPassthrough,
        resource: &BTreeMap<String, String>,
        registry: &mut Registry,
        inherited: &mut dyn FnMut(&'static str, SocketAddr) -> Option<std::net::TcpListener>,
    ) -> Result<Passthrough, PassthroughError> {
        let CheckedPassthrough {
            grpc_listen: grpc_addr,
            http_listen: http_addr,
            app_protocol,
            upstreams,
        } = checked.clone();
        let mut bind = |key: &'static str, addr: SocketAddr| {
            // A socket the previous image handed over (already where `addr` says).
            let handed = inherited(key, addr);
            async move {
                let err = |source| PassthroughError::Bind { key, addr, source };
                match handed {
                    Some(l) => TcpListener::from_std(l).map_err(err),
                    None => TcpListener::bind(addr).await.map_err(err),
                }
            }
        };
        let grpc_listener = bind("grpc_listen", grpc_addr).await?;
        let http_listener = bind("http_listen", http_addr).await?;
        // Copies of the listening sockets, for `tandem upgrade` to hand over.
        let sockets = [
            ("grpc_listen", &grpc_listener),
            ("http_listen", &http_listener),
        ]
        .into_iter()
        .filter_map(|(k, l)| {
            use std::os::fd::AsFd;
            l.as_fd().try_clone_to_owned().ok().map(|fd| (k, fd))
        })
        .collect();
        let local = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
        let (grpc_local, http_local) = (
            local(&grpc_listener, grpc_addr),
            local(&http_listener, http_addr),
        );

        let counters = counters::Counters::register(registry);
        let (stop, stop_rx) = watch::channel(false);
        let mut queues = Vec::new();
        let mut forwarders = JoinSet::new();
        for (s, up) in upstreams {
            tracing::info!(event = "otlp_passthrough_upstream", signal = s.as_str(), protocol = up.protocol.as_str(), url = %up.url, compression = ?up.compression, tls_roots = up.tls.roots(), "the app's {} go to {}", s.as_str(), up.url);
            let (queue, rx) = forward::Queue::new(cfg.queue_size.as_u64() as usize);
            let f = forward::Forwarder::new(
                s,
                up,
                &queue,
                cfg.timeout,
                cfg.max_retry_time,
                counters.clone(),
            );
            forwarders.spawn(f.run(rx, stop_rx.clone()));
            queues.push((s, queue));
        }
        let receiver = Arc::new(receive::Receiver {
            attrs: resource.clone(),
            queues: queues.clone(),
            max_request: cfg.max_request_size.as_u64() as usize,
            counters: counters.clone(),
        });
        let mut servers = JoinSet::new();
        servers.spawn(receive::serve(
            grpc_listener,
            receiver.clone(),
            stop_rx.clone(),
        ));
        servers.spawn(receive::serve(http_listener, receiver, stop_rx));
        let app_endpoint = match app_protocol {
            Protocol::Grpc => format!("http://{grpc_local}"),
            Protocol::HttpProtobuf => format!("http://{http_local}"),
        };
        tracing::info!(event = "otlp_passthrough_listening", grpc = %grpc_local, http = %http_local, app_endpoint, "OTLP pass-through: the app's telemetry goes through tandem");
        Ok(Passthrough {
            app_endpoint,
            app_protocol,
            stop,
            servers,
            forwarders,
            queues,
            counters,
            shutdown_timeout: cfg.shutdown_timeout,
            sockets,
        })
    }

    /// The listening sockets by key (`grpc_listen`, `http_listen`), for a new image of
    /// tandem: they stay open and listening after [`Passthrough::shutdown`] while a copy is
    /// held, so the app's exporter is never refused.
    pub fn listening_sockets(&self) -> Vec<(&'static str, std::os::fd::OwnedFd)> {
        self.sockets
            .iter()
            .filter_map(|(k, fd)| fd.try_clone().ok().map(|fd| (*k, fd)))
            .collect()
    }

    /// Point the app at the pass-through: `OTEL_EXPORTER_OTLP_ENDPOINT` and `_PROTOCOL` are
    /// added to `env` (the app's configured `app.env`) unless it sets them, and tandem's own
    /// upstream variables are kept from the app (`remove`).
    pub fn app_env(&self, env: &mut BTreeMap<String, String>, remove: &mut Vec<String>) {
        if env.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT") {
            tracing::info!(
                event = "otlp_passthrough_not_injected",
                "app.env sets OTEL_EXPORTER_OTLP_ENDPOINT; the app's telemetry goes where it says"
            );
            return;
        }
        env.insert(
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            self.app_endpoint.clone(),
        );
        env.entry("OTEL_EXPORTER_OTLP_PROTOCOL".into())
            .or_insert_with(|| self.app_protocol.as_str().into());
        remove.extend(
            bypassing_vars()
                .into_iter()
                .filter(|v| !env.contains_key(v)),
        );
    }

    /// Stop accepting, then forward what is queued for up to `shutdown_timeout`; what is
    /// left is counted as dropped. Returns whether everything queued was handled.
    pub async fn shutdown(mut self) -> bool {
        for (_, q) in &self.queues {
            q.close();
        }
        self.stop.send_replace(true);
        let forwarders = &mut self.forwarders;
        let flushed = timeout(self.shutdown_timeout, async {
            while forwarders.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        self.forwarders.abort_all();
        self.servers.abort_all();
        let mut left = 0;
        for (s, q) in &self.queues {
            let n = q.pending();
            if n > 0 {
                self.counters.dropped(*s, counters::Drop::Shutdown, n);
                left += n;
            }
        }
        if flushed {
            tracing::info!(
                event = "otlp_passthrough_flushed",
                "OTLP pass-through: everything queued was forwarded (or counted as dropped)"
            );
        } else {
            tracing::warn!(
                event = "otlp_passthrough_flushed",
                dropped = left,
                timeout_ms = self.shutdown_timeout.as_millis() as u64,
                "OTLP pass-through: shutdown_timeout passed; what was still queued is dropped"
            );
        }
        flushed
    }
}
