"""The command line's logs (text, or JSON lines for log shippers, on stderr) and its OpenTelemetry export (``--otel``).

``--otel`` sets an OpenTelemetry SDK tracer provider and meter provider as the process's global ones, each with an
OTLP exporter; everything is configured by the standard ``OTEL_*`` environment variables (endpoint, headers,
protocol, service name, sampler, export intervals). The SDK and the exporter are imported only then: they are not
dependencies of the CLI, but of the ``otlp`` extra.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Final

from ._auth import UsageError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator

__all__ = ["JsonFormatter", "add_telemetry_arguments", "configure_logging", "exporting", "logs_json"]

LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
_TEXT_FORMAT: Final = "%(levelname)s %(name)s: %(message)s"
# What every LogRecord has: anything else on a record was passed in ``extra=`` and goes into the JSON object.
_STANDARD: Final = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime", "taskName"}
)
_NEEDED: Final = (  # module prefix, the package to install
    ("opentelemetry.sdk", "opentelemetry-sdk"),
    ("opentelemetry.exporter", "opentelemetry-exporter-otlp"),
    ("opentelemetry", "opentelemetry-api"),
)
_SERVICE_NAME: Final = "batch-dealloc"


def add_telemetry_arguments(parser: argparse.ArgumentParser) -> None:
    """The global options ``--log-level``, ``--log-format`` and ``--otel``."""
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVELS,
        default=None,
        help="log records from this level on, to stderr (default WARNING; DEBUG with --debug)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="json: one JSON object per log record on stderr (for log shippers); no progress display then",
    )
    parser.add_argument(
        "--otel",
        action="store_true",
        help="export traces and metrics over OTLP, configured by the OTEL_* environment variables "
        "(needs opentelemetry-sdk and opentelemetry-exporter-otlp)",
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, the record's extras, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in data:
                data[key] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return json.dumps(data, ensure_ascii=False, default=repr)  # an extra JSON cannot hold shows as its repr


def configure_logging(args: argparse.Namespace) -> None:
    """The root logger's level and stderr handler (as ``logging.basicConfig``: a no-op if a handler is there)."""
    level = args.log_level or ("DEBUG" if args.debug else "WARNING")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if args.log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])


def logs_json() -> bool:
    """Whether log records go out as JSON lines (so that other messages on stderr should too)."""
    return any(isinstance(handler.formatter, JsonFormatter) for handler in logging.getLogger().handlers)


def _package_of(module: str) -> str:
    """The package that provides ``module`` (a missing import named in a usage error)."""
    for prefix, package in _NEEDED:
        if module == prefix or module.startswith(f"{prefix}."):
            return package
    return "opentelemetry-exporter-otlp" if module.split(".", maxsplit=1)[0] in {"grpc", "google"} else module


@contextlib.contextmanager
def exporting(enabled: bool) -> Iterator[None]:  # noqa: FBT001 (the --otel flag)
    """With ``enabled``: global SDK providers exporting over OTLP for the block, flushed and shut down after it.

    Raises:
        UsageError: the SDK or the OTLP exporter is not installed, or the protocol asked for is not known.
    """
    if not enabled:
        yield
        return
    try:
        stack = _start_sdk()
    except ImportError as exc:  # the SDK, the exporter, or a package the exporter needs
        raise UsageError(
            f"--otel needs {_package_of(exc.name or '')} (the otlp extra: opentelemetry-sdk and "
            "opentelemetry-exporter-otlp): pip install 'batch-dealloc-async[otlp]'"
        ) from None
    with stack:
        yield


def _protocol(signal: str) -> str:
    protocol = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    )
    if protocol not in {"grpc", "http/protobuf"}:
        raise UsageError(f"OTLP protocol {protocol!r} is not supported by --otel (grpc or http/protobuf)")
    return protocol


def _start_sdk() -> contextlib.ExitStack:
    """Set the global providers; what shuts them down (flushing what is left to export)."""
    # Imported here only: --otel is the one path that needs the SDK (PLC0415 for each import below).
    from opentelemetry import metrics, trace  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter  # noqa: PLC0415

    span_exporter: SpanExporter
    metric_exporter: MetricExporter
    if _protocol("TRACES") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter  # noqa: PLC0415

        span_exporter = OTLPSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter as OTLPHttpSpanExporter,
        )

        span_exporter = OTLPHttpSpanExporter()
    if _protocol("METRICS") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter  # noqa: PLC0415

        metric_exporter = OTLPMetricExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # noqa: PLC0415
            OTLPMetricExporter as OTLPHttpMetricExporter,
        )

        metric_exporter = OTLPHttpMetricExporter()

    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": _SERVICE_NAME}))
    tracer_provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(metric_exporter)])
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    stack = contextlib.ExitStack()
    stack.callback(meter_provider.shutdown)
    stack.callback(tracer_provider.shutdown)
    return stack
