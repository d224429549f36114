"""Telemetry: one process's tracer and meter providers, set up from OTEL_* and flushed on stop.

Tracing is configured only by the standard OpenTelemetry variables:

- ``OTEL_SERVICE_NAME`` (default: the service's own name, ``goverse-gate`` or ``goverse-node``)
  and ``OTEL_RESOURCE_ATTRIBUTES``;
- ``OTEL_TRACES_EXPORTER``: a comma-separated list of ``otlp``, ``console`` and ``none``. When
  unset it is ``otlp`` if ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
  is set and ``none`` otherwise, so a process without a collector neither exports nor complains;
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` and the other ``OTEL_EXPORTER_OTLP_*`` variables of the gRPC
  OTLP exporter (``OTEL_EXPORTER_OTLP_PROTOCOL`` may only be ``grpc``);
- ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG`` and ``OTEL_BSP_*`` (batching).

With ``none`` (and no ``OTEL_TRACES_SAMPLER``) every span is sampled out: a call still gets a
span context (a trace id, continued from its caller's and passed on to the next hop, so log
lines still carry ``trace_id``) but no span object is recorded, which would cost about a third
of a relay's CPU for spans nobody reads. Spans are exported in batches by
a background thread: a call never waits for the collector. Metrics are read by Prometheus from
an HTTP endpoint served from the event loop (:meth:`Telemetry.start_metrics_server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import structlog
from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, DEFAULT_ON, Sampler
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from goverse.server import _lean_spans
from goverse.server._grpc import ListenError
from goverse.server._metrics_endpoint import MetricsEndpoint

log = structlog.get_logger(__name__)

TRACES_EXPORTERS = ("otlp", "console", "none")
METRICS_HOST = "0.0.0.0"
"""Where the metrics endpoint listens unless told (``--metrics-host``): every interface, as
Prometheus scrapes the pod IP (and the gRPC port listens there too)."""


class TelemetryConfigError(ValueError):
    """An OTEL_* variable has a value this process cannot honour."""


def traces_exporters(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The exporters ``OTEL_TRACES_EXPORTER`` names (see the module docstring for the default).

    Raises :class:`TelemetryConfigError` for a name other than otlp, console or none, and for
    an ``OTEL_EXPORTER_OTLP_PROTOCOL`` other than grpc when otlp is used.
    """
    raw = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not raw:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        raw = "otlp" if endpoint else "none"
    names = tuple(dict.fromkeys(item.strip().lower() for item in raw.split(",") if item.strip()))
    unknown = [name for name in names if name not in TRACES_EXPORTERS]
    if unknown:
        raise TelemetryConfigError(
            f"OTEL_TRACES_EXPORTER={raw!r}: {', '.join(unknown)} is not one of "
            f"{', '.join(TRACES_EXPORTERS)}"
        )
    if "none" in names and len(names) > 1:
        raise TelemetryConfigError(f"OTEL_TRACES_EXPORTER={raw!r}: none excludes the others")
    if "otlp" in names:
        protocol = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        )
        if protocol != "grpc":
            raise TelemetryConfigError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only grpc is supported"
            )
    return tuple(name for name in names if name != "none")


def _console_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + os.linesep


def build_resource(default_service_name: str, attributes: Mapping[str, str]) -> Resource:
    """The process's resource: `default_service_name` and `attributes`, overridden by
    ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``."""
    base = Resource.create({"service.name": default_service_name, **attributes})
    return base.merge(OTELResourceDetector().detect())


def _sampler(env: Mapping[str, str], *, exporting: bool) -> Sampler | None:
    """ALWAYS_OFF when no span would be exported and no sampler is asked for; else None (the
    SDK's own choice from ``OTEL_TRACES_SAMPLER``, parent-based always-on by default)."""
    if exporting or env.get("OTEL_TRACES_SAMPLER"):
        return None
    return ALWAYS_OFF


def _span_exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stdout, formatter=_console_line)
    # Imported here: the gRPC exporter module is only needed when it is used.
    from goverse.server._otlp_spans import OTLPBytesSpanExporter

    return OTLPBytesSpanExporter()


_LEAN_SAMPLERS = (DEFAULT_ON, ALWAYS_ON)
"""The samplers under which a lean span records what the SDK's would (the SDK's objects)."""
_LEAN_PROPAGATORS = ({"tracecontext", "baggage"}, {"tracecontext"})
_SPAN_LIMIT_VARIABLES = (
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
)


def _lean_recorder(
    env: Mapping[str, str], provider: TracerProvider, exporters: Sequence[SpanExporter]
) -> _lean_spans.Recorder | None:
    """Where goverse's per-call spans go as lean spans (:mod:`goverse.server._lean_spans`):
    only when the spans would be the SDK's own, OTLP the only exporter, the default sampler,
    propagators and span limits; otherwise None (every span the SDK's)."""
    from goverse.server._otlp_spans import OTLPBytesSpanExporter

    if not exporters or not all(isinstance(item, OTLPBytesSpanExporter) for item in exporters):
        return None
    raw = env.get("OTEL_PROPAGATORS", "tracecontext,baggage")
    propagators = {item.strip().lower() for item in raw.split(",") if item.strip()}
    # The provider's own sampler, as the SDK chose it from the environment.
    if provider.sampler not in _LEAN_SAMPLERS or propagators not in _LEAN_PROPAGATORS:
        return None
    if any(env.get(name) for name in _SPAN_LIMIT_VARIABLES):
        return None
    scope = InstrumentationScope("goverse", "", "", {})  # as the SDK's get_tracer("goverse")
    return _lean_spans.Recorder.of(provider, scope)


class Telemetry:
    """The tracer provider, the meter provider and the metrics endpoint of one process.

    Construction reads the environment and builds both providers; nothing runs yet.
    :meth:`install` makes them the process's global providers (what gRPC interceptors and
    ``trace.get_tracer`` use). :meth:`start_metrics_server` binds the Prometheus endpoint on
    ``<metrics_host>:<metrics_port>`` (port 0: any free port; None in the constructor: no
    endpoint).
    :meth:`shutdown` exports the spans still buffered and stops the endpoint, bounded by a
    timeout; it is idempotent.

    `span_exporters` replaces the exporters named by ``OTEL_TRACES_EXPORTER`` (tests).
    """

    def __init__(
        self,
        default_service_name: str,
        *,
        resource_attributes: Mapping[str, str] | None = None,
        metrics_port: int | None = None,
        metrics_host: str = METRICS_HOST,
        environ: Mapping[str, str] | None = None,
        span_exporters: Sequence[SpanExporter] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.resource = build_resource(default_service_name, resource_attributes or {})
        self.service_name = str(self.resource.attributes.get("service.name", ""))
        if span_exporters is None:
            self.exporter_names = traces_exporters(env)
            span_exporters = [_span_exporter(name) for name in self.exporter_names]
        else:
            self.exporter_names = tuple(type(exporter).__name__ for exporter in span_exporters)
        self.tracer_provider = TracerProvider(
            resource=self.resource,
            sampler=_sampler(env, exporting=bool(span_exporters)),
            shutdown_on_exit=False,
        )
        for exporter in span_exporters:
            self.tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        self._lean_spans = _lean_recorder(env, self.tracer_provider, span_exporters)
        self._registry = CollectorRegistry()
        self._requested_port = metrics_port
        self._metrics_host = metrics_host
        readers = []
        if metrics_port is not None:
            ProcessCollector(registry=self._registry)
            PlatformCollector(registry=self._registry)
            GCCollector(registry=self._registry)
            readers.append(
                PrometheusMetricReader(
                    disable_target_info=False,
                    scope_info_enabled=False,
                    registry=self._registry,
                )
            )
        self.meter_provider = MeterProvider(
            resource=self.resource, metric_readers=readers, shutdown_on_exit=False
        )
        self._endpoint: MetricsEndpoint | None = None
        self.metrics_port = 0
        """The port the metrics endpoint is bound to (0 when it is not serving)."""
        self._shutdown: asyncio.Event | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """The Prometheus registry the endpoint serves."""
        return self._registry

    def meter(self, name: str) -> metrics.Meter:
        return self.meter_provider.get_meter(name)

    def install(self) -> None:
        """Makes these providers the global ones (once per process)."""
        trace.set_tracer_provider(self.tracer_provider)
        metrics.set_meter_provider(self.meter_provider)
        _lean_spans.install(self._lean_spans)

    async def start_metrics_server(self) -> int:
        """Serves ``/metrics`` on ``<metrics_host>:<metrics_port>`` from the running loop
        (:class:`MetricsEndpoint`); returns the bound port (0 when the constructor was given
        None: no endpoint). Raises ListenError when it cannot bind."""
        if self._requested_port is None or self._endpoint is not None:
            return self.metrics_port
        endpoint = MetricsEndpoint(self._registry, self._metrics_host, self._requested_port)
        where = f"{self._metrics_host}:{self._requested_port}"
        try:
            self.metrics_port = await endpoint.start()
        except OSError as error:
            raise ListenError(f"cannot serve metrics on {where}: {error}") from error
        self._endpoint = endpoint
        log.info(
            "serving metrics", host=self._metrics_host, port=self.metrics_port, path="/metrics"
        )
        return self.metrics_port

    async def shutdown(self, timeout: float) -> None:
        """Exports buffered spans and stops the metrics endpoint, for at most `timeout` seconds.

        The work runs on a daemon thread: a collector that does not answer delays this call by
        `timeout` at most and never keeps the process from exiting. Idempotent; concurrent
        callers wait for the first one.
        """
        if self._shutdown is not None:
            await self._shutdown.wait()
            return
        self._shutdown = asyncio.Event()
        started = time.monotonic()
        try:
            if self._endpoint is not None:
                await self._endpoint.stop()
            done = await _in_daemon_thread(self._shutdown_blocking, max(timeout, 0.0))
            if not done:
                log.warning("telemetry not flushed within the shutdown timeout", timeout_s=timeout)
            else:
                log.debug("telemetry flushed", elapsed_s=round(time.monotonic() - started, 3))
        finally:
            self._shutdown.set()

    def _shutdown_blocking(self) -> None:
        self.tracer_provider.shutdown()  # exports what the batch processors still hold
        self.meter_provider.shutdown()


async def _in_daemon_thread(function: Callable[[], None], timeout: float) -> bool:
    """Runs `function` on a new daemon thread; True when it returned within `timeout`."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def settle(_: object = None) -> None:
        if not finished.done():
            finished.set_result(None)

    def target() -> None:
        try:
            function()
        except Exception:
            logging.getLogger(__name__).exception("telemetry shutdown failed")
        finally:
            with contextlib.suppress(RuntimeError):  # the loop has closed already
                loop.call_soon_threadsafe(settle)

    threading.Thread(target=target, name="telemetry-shutdown", daemon=True).start()
    try:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation of this
        # call that lands in the tick the thread finishes (CPython gh-86296).
        async with asyncio.timeout(timeout):
            await finished
    except TimeoutError:
        return False
    return True


__all__ = [
    "METRICS_HOST",
    "TRACES_EXPORTERS",
    "Telemetry",
    "TelemetryConfigError",
    "build_resource",
    "traces_exporters",
]
