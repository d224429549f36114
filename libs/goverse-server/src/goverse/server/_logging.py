"""Logging: structlog configured once per process, JSON lines or console, stdlib logs included.

Every line written while a span is current carries its ``trace_id`` and ``span_id`` (or, when
spans are sampled out, those of the call being served: :mod:`goverse._unsampled`), and every
line written inside a :func:`log_context` block carries its fields.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from goverse import _unsampled
from goverse._scoped import Scoped

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


_identity: dict[str, str] = {}
"""The process's identity fields (``service``, ``gate_id`` or ``node``), added to every line."""


def _add_identity(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Adds the service's identity to every line, whichever task or library logs it."""
    for key, value in _identity.items():
        event_dict.setdefault(key, value)
    return event_dict


def set_log_identity(**fields: str) -> None:
    """Sets identity fields known only once the service runs (a node's bound address)."""
    _identity.update(fields)


_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})
_log_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "goverse_log_context", default=_NO_FIELDS
)
"""The fields of the innermost :func:`log_context` block (its outer blocks' included)."""


def log_context(**fields: Any) -> Scoped[None]:
    """A block in which every line logged, by this task and the tasks it starts, carries
    `fields` (those neither None nor empty); an inner block's fields win over an outer one's.

    One context variable holds them all: structlog's ``bound_contextvars`` sets one per field
    and walks the whole context to restore them, about 12 µs per call on this project's
    machine against 2 µs here, paid by every call a gate or node serves."""
    known = {key: value for key, value in fields.items() if value not in (None, "")}
    outer = _log_context.get()
    return Scoped(_log_context, {**outer, **known} if outer else known, None)


def current_log_context() -> Mapping[str, Any]:
    """The fields :func:`log_context` adds to a line logged now."""
    return _log_context.get()


def add_log_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Adds the fields of the :func:`log_context` blocks the line is logged in."""
    for key, value in _log_context.get().items():
        event_dict.setdefault(key, value)
    return event_dict


def add_trace_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Adds the current span's ``trace_id`` (32 hex digits) and ``span_id`` (16 hex digits)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    elif (ids := _unsampled.current_ids()) is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict


class ThrottleTelemetryLogs(logging.Filter):
    """Lets through one record per message of the OpenTelemetry SDK and exporters per
    `interval` seconds: an unreachable collector is reported, not repeated every export."""

    def __init__(self, interval: float = 60.0) -> None:
        super().__init__()
        self._interval = interval
        self._last: dict[tuple[str, int, object], float] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("opentelemetry"):
            return True
        key = (record.name, record.levelno, record.msg)
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                return False
            self._last[key] = now
        return True


GRPC_LOGGER = "grpc._cython.cygrpc"
_PEER_GONE_PREFIX = "ExecuteBatchError raised in core by servicer method"


class QuietPeerGone(logging.Filter):
    """Turns grpc.aio's ERROR "ExecuteBatchError raised in core by servicer method [m]" into one
    DEBUG line without a traceback: a client or gate that leaves while a write to it is pending
    fails that write, and grpc says so at ERROR when the failed write is seen before the peer's
    close (``_handle_exceptions`` in its ``server.pyx.pxi`` checks ``client_closed``, which
    another callback sets). A peer leaving is an expected end of a stream."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if record.levelno < logging.ERROR or not message.startswith(_PEER_GONE_PREFIX):
            return True
        record.rpc = message.removeprefix(_PEER_GONE_PREFIX).strip(" []")
        return demoted(record, "peer went away with a write pending")


_INVALID_ENCODING = "Invalid encoding on %s"


class QuietInvalidEncoding(logging.Filter):
    """Turns grpc's ERROR "Invalid encoding on b'…'" into one DEBUG line without the value
    or a traceback. grpc logs it, with the raw bytes, each time a handler reads metadata whose
    text value is not UTF-8 (it then reads it as Latin-1, and goverse refuses or ignores the
    value): any peer could otherwise fill the log, and have a credential or token it sent
    with one bad byte written there in full."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or record.msg != _INVALID_ENCODING:
            return True
        return demoted(record, "a metadata value is not UTF-8 (not logged)")


def demoted(record: logging.LogRecord, message: str) -> bool:
    """Makes `record` a DEBUG line saying `message`, without arguments or traceback; whether
    it is still written (only when the process logs at DEBUG: the level was checked for the
    record's first level already). For a :class:`logging.Filter` that quiets a library's
    line about an expected event (what a peer did), as those of this module do."""
    record.msg, record.args = message, None
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    record.exc_info, record.exc_text = None, None
    return logging.getLogger().getEffectiveLevel() <= logging.DEBUG


def configure_logging(level: str, fmt: str, **identity: str) -> None:
    """Routes structlog and stdlib logging (grpc, asyncio) through one renderer on stdout.

    `fmt` "auto" means console on a TTY and JSON lines otherwise; `identity` (for example
    ``service="gate", gate_id="gate-0"``) is added to every line.
    """
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    _identity.clear()
    _identity.update(identity)
    shared: list[Processor] = [
        add_log_context,  # before structlog's: a call's fields win over its stream's
        structlog.contextvars.merge_contextvars,
        add_trace_context,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_identity,
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(ThrottleTelemetryLogs())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # Libraries that log with the standard library (the client SDK among them) pass
            # their fields as `extra`: they become keys of the line like structlog's.
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    quiet = logging.getLogger(GRPC_LOGGER)
    quiet.filters[:] = [
        f for f in quiet.filters if not isinstance(f, QuietPeerGone | QuietInvalidEncoding)
    ]
    quiet.addFilter(QuietPeerGone())
    quiet.addFilter(QuietInvalidEncoding())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
