"""Metrics plumbing shared by gate and node: call duration by RPC, object type, method and code.

Instruments are OpenTelemetry instruments; the Prometheus endpoint (see
:mod:`goverse.server._telemetry`) turns ``goverse.gate.call.duration`` (unit ``s``) into
``goverse_gate_call_duration_seconds_{bucket,sum,count}`` and a counter ``x.y`` into
``x_y_total``. Observable instruments are read by the endpoint's thread at scrape time, so
their callbacks only take atomic snapshots (``len()``, ``list(d.values())``, ``dict(c)``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from opentelemetry import metrics

from goverse._tracing import method_of, status_code_of

CALL_DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Bucket bounds (seconds) of the call duration histograms."""

OTHER = "_other"
"""The label value that stands for every value beyond a :class:`LabelLimiter`'s limit."""


class LabelLimiter:
    """Keeps a label's cardinality bounded: the first `limit` distinct values pass unchanged,
    later new values become ``_other`` (a client can send any object type to a gate)."""

    def __init__(self, limit: int = 200) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


def call_duration_histogram(meter: metrics.Meter, name: str, what: str) -> metrics.Histogram:
    return meter.create_histogram(
        name,
        unit="s",
        description=f"Duration of {what}, by rpc, object_type, method and status code",
        explicit_bucket_boundaries_advisory=list(CALL_DURATION_BUCKETS),
    )


class CallMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Records the duration and status code of every unary call to `services` in `histogram`,
    with the attributes ``rpc`` (the gRPC method), ``object_type``, ``method`` (the object
    method, for CallObject) and ``code`` (``OK``, ``NOT_FOUND`` …)."""

    def __init__(
        self,
        histogram: metrics.Histogram,
        services: Iterable[str],
        *,
        label_limit: int = 200,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._histogram = histogram
        self._prefixes = tuple(f"/{service}/" for service in services)
        self._types = LabelLimiter(label_limit)
        self._methods = LabelLimiter(label_limit)
        self._clock = clock

    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = method_of(handler_call_details)
        if handler is None or handler.unary_unary is None or not method.startswith(self._prefixes):
            return handler
        behavior = handler.unary_unary
        rpc = method.rpartition("/")[2]
        clock, record = self._clock, self.record

        async def measured(request: Any, context: Any) -> Any:
            started = clock()
            code = grpc.StatusCode.OK
            try:
                return await behavior(request, context)
            except BaseException as error:
                code = status_code_of(error, context)
                raise
            finally:
                record(rpc, request, code, clock() - started)

        return handler._replace(unary_unary=measured)

    def record(self, rpc: str, request: Any, code: grpc.StatusCode, seconds: float) -> None:
        """Records one call of `rpc` (``CallObject`` …) for `request` (its ``object_type`` and
        ``method`` label it) that ended with `code` after `seconds`: for calls that arrive
        another way than as a unary RPC (a client's Session stream), under the same labels."""
        self._histogram.record(
            seconds,
            {
                "rpc": rpc,
                "object_type": self._types(str(getattr(request, "object_type", ""))[:128]),
                "method": self._methods(str(getattr(request, "method", ""))[:128]),
                "code": code.name,
            },
        )

    @property
    def clock(self) -> Callable[[], float]:
        """The clock durations are measured with."""
        return self._clock


__all__ = [
    "CALL_DURATION_BUCKETS",
    "OTHER",
    "CallMetricsInterceptor",
    "LabelLimiter",
    "call_duration_histogram",
]
