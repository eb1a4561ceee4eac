//! Spans: the SDK's tracer (ids, sampler, span data) with tandem's export queue as its only
//! processor, instead of the SDK's batch processor (which drops silently when full).
//!
//! Invariant: `on_end` never blocks the proxy's request path: it is one `try_send`.
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use tandem_proxy::SharedTracer;

use super::encode;
use super::export::{self, ExportFuture, Exporter, Retry, Stats};
use super::settings::{Export, Queue, Sampling, Signal};
use crate::otlp::post::{Attempt, Poster};

/// The sampler for `s`: parent-based unless the operator chose a plain ratio.
pub fn sampler(s: Sampling) -> Sampler {
    match s {
        Sampling::ParentBased(r) => Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r))),
        Sampling::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        Sampling::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        Sampling::Ratio(r) if r >= 1.0 => Sampler::AlwaysOn,
        Sampling::Ratio(r) if r <= 0.0 => Sampler::AlwaysOff,
        Sampling::Ratio(r) => Sampler::TraceIdRatioBased(r),
    }
}

/// The span export behind the queue: each batch encoded straight from the spans
/// ([`encode`]), no copy of the batch, and sent with [`Poster`].
struct Spans {
    poster: Poster,
    resource: Resource,
}

impl Exporter for Spans {
    type Item = SpanData;
    fn export<'a>(&'a self, batch: &'a [SpanData]) -> ExportFuture<'a> {
        Box::pin(async move {
            let mut body = Vec::new();
            encode::export_trace_request(&self.resource, batch, &mut body);
            match self.poster.send(self.poster.prepare(body.into())).await {
                Attempt::Sent => Ok(()),
                Attempt::Retry(why, _) | Attempt::Reject(why) => {
                    Err(OTelSdkError::InternalFailure(why))
                }
            }
        })
    }
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Spans")
    }
}

/// Hands ended, sampled spans to the export queue.
#[derive(Debug)]
struct QueueProcessor(export::Sender<SpanData>);

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.push(span);
        }
    }

    // Flushing is the lifecycle's job, through the queue (async, bounded); the SDK's blocking
    // entry points have nothing to do.
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// A running trace export: the tracer for the proxy and the queue to flush at stop.
pub struct Traces {
    /// Kept so the tracer stays valid.
    pub provider: SdkTracerProvider,
    /// For `Hooks::with_tracer`.
    pub tracer: SharedTracer,
    /// The queue.
    pub queue: export::Sender<SpanData>,
}

/// Build the exporter and the provider; needs the tokio runtime (tonic).
pub fn start(
    e: &Export,
    q: Queue,
    s: Sampling,
    resource: &Resource,
    retry: Retry,
    stats: Stats,
) -> Result<Traces, super::exporters::ExportError> {
    let spans = Spans {
        poster: super::exporters::span_poster(e)?,
        resource: resource.clone(),
    };
    let queue = export::spawn(spans, Signal::Traces, q, retry, stats);
    let provider = SdkTracerProvider::builder()
        .with_sampler(sampler(s))
        .with_span_processor(QueueProcessor(queue.clone()))
        .with_resource(resource.clone())
        .build();
    let tracer = provider.tracer("tandem");
    Ok(Traces {
        tracer: Arc::new(opentelemetry::global::BoxedTracer::new(Box::new(tracer))),
        provider,
        queue,
    })
}
