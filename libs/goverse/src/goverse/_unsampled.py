"""Unsampled calls: the W3C context of a call whose spans no one records, kept without spans.

A service without a trace exporter samples every span out (``OTEL_TRACES_EXPORTER=none``:
the tracer provider's sampler is always off). Its spans would still be created, as
non-recording spans that only carry ids: a trace id continued from the caller (or a new one)
so that log lines carry ``trace_id`` and the next hop continues it. Creating them, extracting
and injecting their context and attaching it as the current context cost more than the rest
of a relayed call's work in the gate, for nothing anyone reads.

So, when :func:`unsampled` says every span is dropped, a call served from a call stream runs
in a context of its own here instead (:func:`serving`): a ``traceparent`` with
the caller's trace id (or a new one), a new span id and the not-sampled flag, as the SDK's
non-recording span would have had. What the caller's carrier holds besides (``tracestate``,
``baggage``) travels on unchanged. The calls it makes send that carrier (:func:`current`),
and log lines written meanwhile carry its ids (:func:`current_ids`). Nothing of the
OpenTelemetry context is touched: ``trace.get_current_span()`` is the invalid span during
such a call.
"""

from __future__ import annotations

import contextvars
import random
import re
from collections.abc import Mapping
from typing import TypeVar

from opentelemetry import trace

from goverse._scoped import Scoped

R = TypeVar("R")

TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")
"""Version 00 of W3C ``traceparent``: version, trace id, parent span id, flags."""
_INVALID_TRACE_ID = "0" * 32

_carrier: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "goverse_unsampled_carrier", default=None
)
_checked: tuple[object, bool] = (None, False)
"""The tracer provider last checked, and whether its sampler is always off."""


def unsampled() -> bool:
    """Whether this process's tracer provider samples every span out (an SDK provider whose
    sampler is always off); checked again whenever the global provider changes."""
    global _checked
    provider = trace.get_tracer_provider()
    if provider is not _checked[0]:
        sampler = getattr(provider, "sampler", None)
        always_off = sampler is not None and sampler.get_description() == "AlwaysOffSampler"
        _checked = (provider, always_off)
    return _checked[1]


def continued(carrier: Mapping[str, str]) -> dict[str, str]:
    """The carrier of a call continuing `carrier` (the caller's W3C context, maybe empty or
    malformed): the caller's trace id or a new one, a new span id, not sampled."""
    parent = carrier.get(TRACEPARENT, "") if carrier else ""
    match = _TRACEPARENT.fullmatch(parent)
    trace_id = match.group(1) if match is not None else _INVALID_TRACE_ID
    if trace_id == _INVALID_TRACE_ID:
        trace_id = format(random.getrandbits(128) or 1, "032x")
    span_id = format(random.getrandbits(64) or 1, "016x")
    traceparent = f"00-{trace_id}-{span_id}-00"
    if len(carrier) <= 1 and parent:  # the usual carrier: nothing to keep but its traceparent
        return {TRACEPARENT: traceparent}
    result = dict(carrier) if carrier else {}
    result[TRACEPARENT] = traceparent
    return result


def serving(carrier: Mapping[str, str], result: R) -> Scoped[R]:
    """A block run as a call served for a caller whose context `carrier` holds; the block
    gets `result`."""
    return Scoped(_carrier, continued(carrier), result)


def current() -> dict[str, str]:
    """The carrier to send with a call made now: the served call's, or a new trace's."""
    carrier = _carrier.get()
    return carrier if carrier is not None else continued({})


def current_ids() -> tuple[str, str] | None:
    """The trace id and span id (hex) of the call being served, if any."""
    carrier = _carrier.get()
    if carrier is None:
        return None
    parent = carrier[TRACEPARENT]
    return parent[3:35], parent[36:52]


__all__ = [
    "TRACEPARENT",
    "continued",
    "current",
    "current_ids",
    "serving",
    "unsampled",
]
