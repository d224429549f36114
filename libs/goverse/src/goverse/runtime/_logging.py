"""Logging: structlog configured once per process, JSON lines or console, stdlib logs included."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("auto", "json", "console")


def _static_fields(fields: Mapping[str, str]) -> Processor:
    """Adds the service's identity to every line, whichever task or library logs it."""
    items = tuple(fields.items())

    def add(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        for key, value in items:
            event_dict.setdefault(key, value)
        return event_dict

    return add


def configure_logging(level: str, fmt: str, **identity: str) -> None:
    """Routes structlog and stdlib logging (grpc, asyncio) through one renderer on stdout.

    `fmt` "auto" means console on a TTY and JSON lines otherwise; `identity` (for example
    ``service="gate", gate_id="gate-0"``) is added to every line.
    """
    if fmt == "auto":
        fmt = "console" if sys.stdout.isatty() else "json"
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _static_fields(identity),
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
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_fields(**fields: Any) -> dict[str, Any]:
    """Drops empty values so log lines carry only what is known."""
    return {key: value for key, value in fields.items() if value not in (None, "")}
