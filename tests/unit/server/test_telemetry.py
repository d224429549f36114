"""Telemetry: OTEL_* configuration, the metrics endpoint, log correlation and a bounded flush."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from goverse.server import (
    ListenError,
    Telemetry,
    TelemetryConfigError,
    configure_logging,
    current_log_context,
    log_context,
)
from goverse.server._logging import (
    GRPC_LOGGER,
    QuietInvalidEncoding,
    QuietPeerGone,
    ThrottleTelemetryLogs,
    add_log_context,
    add_trace_context,
)
from goverse.server._telemetry import traces_exporters


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4317"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, ()),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",)),
        ({"OTEL_TRACES_EXPORTER": "OTLP, console"}, ("otlp", "console")),
    ],
)
def test_traces_exporter_follows_otel_traces_exporter(
    environ: dict[str, str], expected: tuple[str, ...]
) -> None:
    """Unset, it exports by OTLP only when an OTLP endpoint is configured."""
    assert traces_exporters(environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "jaeger is not one of"),
        ({"OTEL_TRACES_EXPORTER": "none,console"}, "none excludes"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "only grpc",
        ),
    ],
)
def test_unusable_otel_variables_are_refused(environ: dict[str, str], message: str) -> None:
    with pytest.raises(TelemetryConfigError, match=message):
        Telemetry("goverse-node", environ=environ)


def test_service_name_defaults_to_the_service_and_otel_service_name_wins() -> None:
    assert Telemetry("goverse-gate", environ={}).service_name == "goverse-gate"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_SERVICE_NAME", "edge")
        patch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod")
        telemetry = Telemetry("goverse-gate", resource_attributes={"service.instance.id": "g0"})
    assert telemetry.service_name == "edge"
    assert telemetry.resource.attributes["deployment.environment"] == "prod"
    assert telemetry.resource.attributes["service.instance.id"] == "g0"


async def test_the_metrics_endpoint_serves_instruments_and_stops() -> None:
    """Port 0 binds a free port, which start_metrics_server() returns."""
    telemetry = Telemetry("goverse-node", metrics_port=0, environ={})
    telemetry.meter("test").create_counter("goverse.test.things", unit="{thing}").add(3)
    port = await telemetry.start_metrics_server()
    assert port > 0
    text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert "goverse_test_things_total 3.0" in text
    assert 'service_name="goverse-node"' in text
    assert "process_cpu_seconds_total" in text
    await telemetry.shutdown(5)
    with pytest.raises(urllib.error.URLError, match="refused"):
        await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def test_a_busy_metrics_port_is_a_listen_error() -> None:
    # The port is held (listening) while the endpoint tries it: busy, never released.
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        telemetry = Telemetry("goverse-node", metrics_port=busy.getsockname()[1], environ={})
        with pytest.raises(ListenError, match="cannot serve metrics"):
            await telemetry.start_metrics_server()
    await telemetry.shutdown(1)


async def test_metrics_port_none_serves_nothing() -> None:
    """No port (``--metrics-port off``): no endpoint."""
    telemetry = Telemetry("goverse-node", metrics_port=None, environ={})
    assert await telemetry.start_metrics_server() == 0
    await telemetry.shutdown(1)


async def test_shutdown_with_an_unreachable_collector_keeps_to_its_timeout(
    unreachable: str,
) -> None:
    """Spans waiting for a collector that does not answer delay the stop by the timeout at
    most; a second shutdown returns at once."""
    telemetry = Telemetry(
        "goverse-node",
        environ={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{unreachable}",
        },
    )
    tracer = telemetry.tracer_provider.get_tracer("test")
    for index in range(10):
        with tracer.start_as_current_span(f"span-{index}"):
            pass
    started = time.monotonic()
    await telemetry.shutdown(0.5)
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    await telemetry.shutdown(5)
    assert time.monotonic() - started < 0.5


@pytest.fixture
def provider() -> TracerProvider:
    return TracerProvider(shutdown_on_exit=False)


def test_log_lines_in_a_span_carry_its_trace_and_span_ids(provider: TracerProvider) -> None:
    with provider.get_tracer("test").start_as_current_span("call") as span:
        fields = add_trace_context(None, "info", {"event": "x"})
    context = span.get_span_context()
    assert fields["trace_id"] == format(context.trace_id, "032x")
    assert fields["span_id"] == format(context.span_id, "016x")
    assert len(fields["trace_id"]) == 32
    assert len(fields["span_id"]) == 16
    assert "trace_id" not in add_trace_context(None, "info", {"event": "y"})


@pytest.fixture
def json_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], list[str]]]:
    """Logging configured as a service configures it (JSON lines on stdout), restored after;
    yields what reads the lines written so far."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)  # capsys captures only once the test runs
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("info", "json", service="test")
    try:
        yield lambda: [line for line in out.getvalue().splitlines() if line]
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


def test_configured_logging_renders_trace_ids_in_json(
    provider: TracerProvider, json_lines: Callable[[], list[str]]
) -> None:
    with provider.get_tracer("test").start_as_current_span("call") as span:
        structlog.get_logger("t").info("inside")
        logging.getLogger("grpc").warning("library line")
    trace_id = format(span.get_span_context().trace_id, "032x")
    lines = json_lines()
    assert len(lines) == 2
    assert all(f'"trace_id": "{trace_id}"' in line for line in lines)


def test_a_log_context_adds_its_known_fields_inner_ones_winning_until_its_block_ends() -> None:
    with log_context(client_id="c-1", object_type="Counter", principal=None, object_id=""):
        assert current_log_context() == {"client_id": "c-1", "object_type": "Counter"}
        with log_context(object_type="Room", object_id="r-1"):
            fields = add_log_context(None, "info", {"event": "x", "object_id": "explicit"})
        assert current_log_context() == {"client_id": "c-1", "object_type": "Counter"}
    assert fields == {
        "event": "x",
        "object_id": "explicit",
        "client_id": "c-1",
        "object_type": "Room",
    }
    assert current_log_context() == {}
    assert add_log_context(None, "info", {"event": "y"}) == {"event": "y"}


async def test_a_log_context_reaches_the_tasks_started_in_it_and_no_other() -> None:
    async def fields() -> dict[str, object]:
        return dict(current_log_context())

    with log_context(client_id="c-1"):
        inside = asyncio.create_task(fields())
    outside = asyncio.create_task(fields())
    assert await asyncio.wait_for(inside, 10) == {"client_id": "c-1"}
    assert await asyncio.wait_for(outside, 10) == {}


def test_configured_logging_renders_the_log_context_over_structlogs_contextvars(
    json_lines: Callable[[], list[str]],
) -> None:
    with (
        structlog.contextvars.bound_contextvars(client_id="stream", peer="p"),
        log_context(client_id="call", object_id="o-1"),
    ):
        structlog.get_logger("t").info("inside")
        logging.getLogger("grpc").warning("library line")
    lines = json_lines()
    assert len(lines) == 2
    for line in lines:
        assert '"client_id": "call"' in line
        assert '"object_id": "o-1"' in line
        assert '"peer": "p"' in line


def test_telemetry_library_logs_are_throttled() -> None:
    throttle = ThrottleTelemetryLogs(interval=60)

    def record(name: str, message: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, message, None, None)

    exporter = "opentelemetry.exporter.otlp.proto.grpc.exporter"
    assert throttle.filter(record(exporter, "Transient error %s"))
    assert not throttle.filter(record(exporter, "Transient error %s"))
    assert throttle.filter(record(exporter, "Failed to export %s"))
    assert throttle.filter(record("goverse.node", "Transient error %s"))
    assert throttle.filter(record("goverse.node", "Transient error %s"))


def test_no_span_means_no_ids() -> None:
    assert not trace.get_current_span().get_span_context().is_valid


def test_without_an_exporter_spans_are_not_recorded_but_trace_ids_flow() -> None:
    """OTEL_TRACES_EXPORTER=none: no span object is recorded, yet a call's span context has a
    trace id (for log lines), and a child of a caller's context keeps the caller's trace id
    (passed on to the next hop)."""
    tracer = Telemetry("goverse-gate", environ={}).tracer_provider.get_tracer("test")
    root = tracer.start_span("root")
    assert not root.is_recording()
    assert root.get_span_context().is_valid
    child = tracer.start_span("child", context=trace.set_span_in_context(root))
    assert not child.is_recording()
    assert child.get_span_context().trace_id == root.get_span_context().trace_id


def test_an_exporter_or_a_chosen_sampler_records_spans() -> None:
    """With an exporter the SDK's default sampler applies; OTEL_TRACES_SAMPLER is honoured
    even without one (someone asked for it)."""
    exporting = Telemetry("goverse-gate", environ={"OTEL_TRACES_EXPORTER": "console"})
    assert exporting.tracer_provider.get_tracer("test").start_span("s").is_recording()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_TRACES_SAMPLER", "always_on")
        chosen = Telemetry("goverse-gate", environ={"OTEL_TRACES_SAMPLER": "always_on"})
        assert chosen.tracer_provider.get_tracer("test").start_span("s").is_recording()


def test_grpcs_execute_batch_error_becomes_one_quiet_debug_line() -> None:
    """grpc.aio's ERROR for a write to a peer that left is turned into a DEBUG record without
    a traceback, naming the method; it is dropped below DEBUG; other grpc errors pass as
    they are."""
    quiet = QuietPeerGone()

    def record(message: str) -> logging.LogRecord:
        try:
            raise RuntimeError("batch failed")
        except RuntimeError:
            exc_info = sys.exc_info()
        return logging.LogRecord(
            GRPC_LOGGER, logging.ERROR, "server.pyx.pxi", 1, message, None, exc_info
        )

    peer_gone = record(
        "ExecuteBatchError raised in core by servicer method [/goverse.v1.GateService/Register]"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logging.getLogger(), "level", logging.DEBUG)
        assert quiet.filter(peer_gone)
    assert (peer_gone.levelno, peer_gone.exc_info) == (logging.DEBUG, None)
    assert peer_gone.getMessage() == "peer went away with a write pending"
    assert peer_gone.__dict__["rpc"] == "/goverse.v1.GateService/Register"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logging.getLogger(), "level", logging.INFO)
        assert not quiet.filter(record("ExecuteBatchError raised in core by servicer method [m]"))
    other = record("Unexpected [ValueError] raised by servicer method [m]")
    assert quiet.filter(other)
    assert other.levelno == logging.ERROR
    assert other.exc_info is not None


def test_grpcs_invalid_encoding_error_becomes_a_debug_line_without_the_value() -> None:
    """grpc logs a metadata value that is not UTF-8 at ERROR with the raw bytes (a token
    with one bad byte would be written out); it becomes a DEBUG line without them."""
    quiet = QuietInvalidEncoding()

    def record() -> logging.LogRecord:
        try:
            b"secret-token\xe9".decode()
        except UnicodeDecodeError:
            exc_info = sys.exc_info()
        args = (b"secret-token\xe9",)
        return logging.LogRecord(
            GRPC_LOGGER, logging.ERROR, "x.pxi", 1, "Invalid encoding on %s", args, exc_info
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logging.getLogger(), "level", logging.INFO)
        assert not quiet.filter(record())
        patch.setattr(logging.getLogger(), "level", logging.DEBUG)
        debug = record()
        assert quiet.filter(debug)
    assert (debug.levelno, debug.exc_info) == (logging.DEBUG, None)
    assert "secret" not in debug.getMessage()
