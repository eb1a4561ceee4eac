//! Log records: the OTLP log exporter behind tandem's export queue. The records come from the
//! log pipeline's OTLP sink ([`crate::logs::sinks::otlp`]), not from the SDK's batch processor
//! (which drops silently when its queue is full).
use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, SdkLogRecord};
use opentelemetry_sdk::Resource;

use super::export::{self, ExportFuture, Exporter, Retry, Stats};
use super::settings::{Export, Queue, Signal};

struct Logs {
    exporter: opentelemetry_otlp::LogExporter,
    scope: InstrumentationScope,
}

impl Exporter for Logs {
    type Item = SdkLogRecord;
    fn export<'a>(&'a self, batch: &'a [SdkLogRecord]) -> ExportFuture<'a> {
        Box::pin(async move {
            let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
                batch.iter().map(|r| (r, &self.scope)).collect();
            self.exporter.export(LogBatch::new(&refs)).await
        })
    }
}

/// Build the exporter and start its queue; needs the tokio runtime (tonic).
pub fn start(
    e: &Export,
    q: Queue,
    resource: &Resource,
    retry: Retry,
    stats: Stats,
) -> Result<export::Sender<SdkLogRecord>, super::exporters::ExportError> {
    let mut exporter = super::exporters::log(e)?;
    exporter.set_resource(resource);
    let scope = InstrumentationScope::builder("tandem")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    Ok(export::spawn(
        Logs { exporter, scope },
        Signal::Logs,
        q,
        retry,
        stats,
    ))
}
