"""Metrics plumbing shared by gate and node: call duration by RPC, object type, method and code.

Instruments are OpenTelemetry instruments, but for the call durations (:class:`CallDurations`,
recorded once per call served); the Prometheus endpoint (see :mod:`goverse.server._telemetry`)
turns a counter ``x.y`` into ``x_y_total``, and ``goverse.gate.call.duration`` (seconds) is
``goverse_gate_call_duration_seconds_{bucket,sum,count}``. Observable instruments are read at
scrape time on the service's event loop (:mod:`goverse.server._metrics_endpoint`), between two
of its turns, so their callbacks only take quick snapshots (``len()``, ``list(d.values())``,
``dict(c)``).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import grpc
from prometheus_client.metrics_core import HistogramMetricFamily, Metric

from goverse import wire
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
"""The label value that stands for every name a service does not serve (:class:`KnownNames`)."""


class KnownNames:
    """The object types and methods a service serves: the only names its metrics use as
    ``object_type`` and ``method`` label values.

    A caller can send any name; one a service does not serve (an unknown type, a method its
    type lacks, a malformed or oversized name) is labelled :data:`OTHER`, so the series stay as
    many as the types and methods deployed whatever clients send, and a served name keeps its
    label however many made-up ones came first. A node knows the types it loaded; a gate those
    its nodes describe (its Describe catalog adds them, :meth:`add`, at every refresh) and,
    before its first refresh, those of the calls a node answered OK (:meth:`learn`): only a
    node that serves a type and method answers a call to it OK. Names are only ever added, and
    never by a caller alone.
    """

    def __init__(self, methods: Mapping[str, Iterable[str]] | None = None) -> None:
        self._methods: dict[str, frozenset[str]] = {}
        if methods is not None:
            self.add(methods)

    def add(self, methods: Mapping[str, Iterable[str]]) -> None:
        """Knows each type of `methods` and its methods from now on (besides those known)."""
        for object_type, names in methods.items():
            self._methods[object_type] = self._methods.get(object_type, frozenset()) | frozenset(
                names
            )

    def learn(self, object_type: str, method: str) -> None:
        """Knows `object_type` and `method` (empty: a create or delete) from now on: a node
        answered a call to them OK."""
        known = self._methods.get(object_type)
        if known is None or (method and method not in known):
            self.add({object_type: (method,) if method else ()})

    def labels(self, object_type: str, method: str) -> tuple[str, str]:
        """The ``object_type`` and ``method`` label values of a call to `object_type`'s
        `method` (an empty name, such as a create's method or a Status request's type, stays
        empty)."""
        known = self._methods.get(object_type)
        if known is None:
            return OTHER if object_type else "", OTHER if method else ""
        return object_type, method if not method or method in known else OTHER


CALLS = frozenset(wire.CALL_OPS.values())
"""The RPCs that call an object: only a node that serves its type and method answers one OK
(another RPC, ListObjects, answers OK whatever type it names)."""

CallLabels = tuple[str, str, str, str]
"""The labels of a call's duration: ``code``, ``method``, ``object_type``, ``rpc``."""
LABEL_NAMES = ("code", "method", "object_type", "rpc")


class CallDurations:
    """The histogram of the durations of the calls a service served, by ``rpc`` (the gRPC
    method: ``CallObject`` …), ``object_type``, ``method`` (the object method) and ``code``
    (``OK``, ``NOT_FOUND`` …), with :data:`CALL_DURATION_BUCKETS` as bucket bounds.

    Kept here rather than in an OpenTelemetry histogram: its SDK spent 21 us of a 2-core
    machine on each recorded call (a measurement object, a frozenset of the attributes, a
    lock), a twentieth of what the gate spends relaying a call; here a call costs a dict
    lookup and a bisect. Prometheus reads it as a collector of the service's registry
    (:meth:`collect`, on the event loop like every record), under the names and labels the
    OpenTelemetry exporter gave the histogram it replaces: `name` ``goverse.gate.call.duration``
    is ``goverse_gate_call_duration_seconds_{bucket,count,sum}``.
    """

    def __init__(self, name: str, what: str) -> None:
        self.name = name.replace(".", "_")
        self.documentation = f"Duration of {what}, by rpc, object_type, method and status code"
        self._bounds = CALL_DURATION_BUCKETS
        self._series: dict[CallLabels, _Series] = {}

    def record(self, labels: CallLabels, seconds: float) -> None:
        """Counts one call with `labels` that took `seconds`."""
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = _Series(len(self._bounds))
        series.counts[bisect.bisect_left(self._bounds, seconds)] += 1
        series.sum += seconds

    def counts(self) -> dict[CallLabels, int]:
        """How many calls were recorded, by labels."""
        return {labels: sum(series.counts) for labels, series in self._series.items()}

    def collect(self) -> Iterator[Metric]:
        """The histogram as a Prometheus metric family (prometheus_client's collector call)."""
        family = HistogramMetricFamily(
            self.name, self.documentation, labels=LABEL_NAMES, unit="seconds"
        )
        for labels, series in list(self._series.items()):
            buckets: list[tuple[str, float]] = []
            total = 0
            for bound, count in zip((*map(str, self._bounds), "+Inf"), series.counts, strict=True):
                total += count
                buckets.append((bound, total))
            family.add_metric(list(labels), buckets, sum_value=series.sum)
        yield family


class _Series:
    """One label set's bucket counts (the last one past every bound) and sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, bounds: int) -> None:
        self.counts = [0] * (bounds + 1)
        self.sum = 0.0


class CallMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Records the duration and status code of every unary call to `services` in `durations`,
    with the labels ``rpc`` (the gRPC method), ``object_type``, ``method`` (the object
    method, for CallObject; both as `names` labels them) and ``code`` (``OK``, ``NOT_FOUND``
    …). A call (:data:`CALLS`) answered OK teaches `names` its type and method."""

    def __init__(
        self,
        durations: CallDurations,
        services: Iterable[str],
        *,
        names: KnownNames | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.durations = durations
        self._prefixes = tuple(f"/{service}/" for service in services)
        self.names = names if names is not None else KnownNames()
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
        object_type = str(getattr(request, "object_type", ""))
        method = str(getattr(request, "method", ""))
        names = self.names
        type_label, method_label = names.labels(object_type, method)
        if code is grpc.StatusCode.OK and OTHER in (type_label, method_label) and rpc in CALLS:
            names.learn(object_type, method)
            type_label, method_label = object_type, method
        self.durations.record((code.name, method_label, type_label, rpc), seconds)

    @property
    def clock(self) -> Callable[[], float]:
        """The clock durations are measured with."""
        return self._clock


__all__ = [
    "CALL_DURATION_BUCKETS",
    "LABEL_NAMES",
    "OTHER",
    "CallDurations",
    "CallLabels",
    "CallMetricsInterceptor",
    "KnownNames",
]
