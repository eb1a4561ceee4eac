"""An instrumented app for tandem's pass-through tests: the OpenTelemetry Python SDK with no
endpoint in its code. The exporter (gRPC or HTTP/protobuf) follows OTEL_EXPORTER_OTLP_PROTOCOL,
the endpoint OTEL_EXPORTER_OTLP_ENDPOINT, both set by tandem.

Run with: python3 passthrough_app.py [SPAN_NAME ...]
It exports the spans, one log record and one metric point, flushes and prints "exported".
"""
import logging
import os
import sys

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
else:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

print("endpoint", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"), flush=True)
resource = Resource.create({"service.name": "py-app", "app.flavour": "vanilla"})

tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(tracer_provider)

logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
set_logger_provider(logger_provider)
otel_logger = logging.getLogger("app.otel")
otel_logger.propagate = False
otel_logger.addHandler(LoggingHandler(logger_provider=logger_provider))
otel_logger.setLevel(logging.INFO)

reader = PeriodicExportingMetricReader(OTLPMetricExporter(), export_interval_millis=60000)
meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
metrics.set_meter_provider(meter_provider)

tracer = trace.get_tracer("passthrough-test")
for name in sys.argv[1:] or ["app-span"]:
    with tracer.start_as_current_span(name):
        pass
otel_logger.info("hello from the app")
metrics.get_meter("passthrough-test").create_counter("app.requests").add(3)

tracer_provider.force_flush()
logger_provider.force_flush()
meter_provider.force_flush()
tracer_provider.shutdown()
logger_provider.shutdown()
meter_provider.shutdown()
print("exported", flush=True)
