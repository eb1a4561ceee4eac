//! The OTLP logs sink: every record becomes an OpenTelemetry LogRecord (severity, body,
//! attributes, observed and own timestamps, the trace and span id the line carried) and goes
//! into tandem's export queue for logs ([`crate::telemetry::export`]).
//!
//! Invariant: `write` never blocks and never fails: a full export queue drops the record and
//! counts it (`tandem_otlp_dropped_total{signal="logs"}`); retries happen in the queue's worker.
//!
//! The line between the log pipeline and telemetry is crossed here, in this direction only:
//! this sink depends on [`crate::telemetry`]; telemetry names no log-pipeline type.
use std::io;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry::Key;
use opentelemetry_sdk::logs::{SdkLogRecord, SdkLogger, SdkLoggerProvider};
use serde_json::Value;

use super::super::record::{Level, Record};
use super::Sink;
use crate::logs::config::QueueConfig;
use crate::logs::pipeline::ExtraSink;
use crate::logs::Backpressure;
use crate::telemetry::export::Sender;
use crate::telemetry::Telemetry;

/// The pipeline's OTLP sink for `telemetry`, when it exports logs.
pub fn extra_sink(telemetry: &Telemetry) -> Option<ExtraSink> {
    let (queue, queue_records) = telemetry.log_queue()?;
    Some(ExtraSink {
        name: "otlp".into(),
        sink: Box::new(OtlpSink::new(queue)),
        // The sink itself never blocks (its export queue drops and counts), so the
        // pipeline's queue in front of it is only a hand-off between threads.
        queue: QueueConfig {
            backpressure: Backpressure::Drop,
            queue_records,
        },
    })
}

/// See the module doc.
pub struct OtlpSink {
    /// Only makes empty records (it has no processor): `SdkLogRecord` has no public constructor.
    logger: SdkLogger,
    _provider: SdkLoggerProvider,
    queue: Sender<SdkLogRecord>,
}

// === impl OtlpSink ===

impl OtlpSink {
    /// A sink feeding `queue`.
    pub fn new(queue: Sender<SdkLogRecord>) -> Self {
        let provider = SdkLoggerProvider::builder().build();
        Self {
            logger: provider.logger("tandem"),
            _provider: provider,
            queue,
        }
    }

    /// The LogRecord for `r`.
    pub fn convert(&self, r: &Record) -> SdkLogRecord {
        let mut lr = self.logger.create_log_record();
        lr.set_observed_timestamp(r.observed);
        if let Some(t) = r.time {
            lr.set_timestamp(t);
        }
        let (number, text) = severity(r.level);
        lr.set_severity_number(number);
        lr.set_severity_text(text);
        lr.set_body(AnyValue::String(r.msg.clone().into()));
        lr.add_attribute("log.iostream", r.stream.as_str());
        if let Some(pid) = r.origin.pid {
            lr.add_attribute("tandem.app.pid", i64::from(pid));
        }
        if r.origin.restart_count > 0 {
            lr.add_attribute(
                "tandem.app.restart_count",
                i64::from(r.origin.restart_count),
            );
        }
        if r.partial.is_some() {
            lr.add_attribute("tandem.partial", true);
        }
        if r.lossy {
            lr.add_attribute("tandem.lossy", true);
        }
        if r.parse_error {
            lr.add_attribute("tandem.parse_error", true);
        }
        if let Some(fields) = &r.fields {
            for (k, v) in fields.to_map() {
                lr.add_attribute(Key::new(k), any_value(v));
            }
        }
        if let Some(trace) = r
            .trace_id
            .as_deref()
            .and_then(|t| TraceId::from_hex(t).ok())
        {
            let span = r
                .span_id
                .as_deref()
                .and_then(|s| SpanId::from_hex(s).ok())
                .unwrap_or(SpanId::INVALID);
            if trace != TraceId::INVALID {
                lr.set_trace_context(trace, span, None);
            }
        }
        lr
    }
}

impl Sink for OtlpSink {
    fn write(&mut self, records: &[Record]) -> io::Result<()> {
        for r in records {
            let lr = self.convert(r);
            self.queue.push(lr);
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// OpenTelemetry's severity number and text for a level.
fn severity(level: Level) -> (Severity, &'static str) {
    match level {
        Level::Trace => (Severity::Trace, "TRACE"),
        Level::Debug => (Severity::Debug, "DEBUG"),
        Level::Info => (Severity::Info, "INFO"),
        Level::Warn => (Severity::Warn, "WARN"),
        Level::Error => (Severity::Error, "ERROR"),
        Level::Fatal => (Severity::Fatal, "FATAL"),
    }
}

/// JSON to an attribute value; objects and arrays of mixed types keep their JSON text.
fn any_value(v: Value) -> AnyValue {
    match v {
        Value::String(s) => AnyValue::String(s.into()),
        Value::Bool(b) => AnyValue::Boolean(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AnyValue::Int(i),
            None => AnyValue::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::Null => AnyValue::String("null".into()),
        other => AnyValue::String(other.to_string().into()),
    }
}
