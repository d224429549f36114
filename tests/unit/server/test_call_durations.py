"""CallDurations: the served calls' duration histogram, as Prometheus reads it."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, generate_latest

from goverse.server import CallDurations, CallMetricsInterceptor
from goverse.server._metrics import OTHER


class _Request:
    def __init__(self, object_type: str, method: str) -> None:
        self.object_type = object_type
        self.method = method


def exposed(durations: CallDurations) -> list[str]:
    registry = CollectorRegistry()
    registry.register(durations)
    return generate_latest(registry).decode().splitlines()


def test_durations_are_exposed_as_the_opentelemetry_exporter_exposed_its_histogram() -> None:
    """Names, help, labels (in their order), ``le`` spelled as before, cumulative buckets
    with each bound counting what is at most it, and the count and sum of each series."""
    durations = CallDurations("goverse.gate.call.duration", "calls the gate served")
    metrics = CallMetricsInterceptor(durations, [])
    echo = _Request("Echo", "Echo")
    metrics.record("CallObject", echo, grpc.StatusCode.OK, 0.003)
    metrics.record("CallObject", echo, grpc.StatusCode.OK, 0.0005)
    metrics.record("CallObject", echo, grpc.StatusCode.NOT_FOUND, 40.0)
    lines = exposed(durations)
    name = "goverse_gate_call_duration_seconds"
    ok = 'method="Echo",object_type="Echo",rpc="CallObject"'
    assert lines[:2] == [
        f"# HELP {name} Duration of calls the gate served, by rpc, object_type, method and "
        "status code",
        f"# TYPE {name} histogram",
    ]
    assert f'{name}_bucket{{code="OK",le="0.0005",{ok}}} 1.0' in lines
    assert f'{name}_bucket{{code="OK",le="0.0025",{ok}}} 1.0' in lines
    assert f'{name}_bucket{{code="OK",le="0.005",{ok}}} 2.0' in lines
    assert f'{name}_bucket{{code="OK",le="1.0",{ok}}} 2.0' in lines
    assert f'{name}_bucket{{code="OK",le="+Inf",{ok}}} 2.0' in lines
    assert f'{name}_count{{code="OK",{ok}}} 2.0' in lines
    assert f'{name}_sum{{code="OK",{ok}}} 0.0035' in lines
    assert f'{name}_bucket{{code="NOT_FOUND",le="30.0",{ok}}} 0.0' in lines
    assert f'{name}_bucket{{code="NOT_FOUND",le="+Inf",{ok}}} 1.0' in lines
    assert f'{name}_sum{{code="NOT_FOUND",{ok}}} 40.0' in lines


def test_labels_past_the_limit_fold_into_other() -> None:
    """A client can name any object type: past the limit, new types and methods count as
    ``_other``, so the series stay bounded."""
    durations = CallDurations("t.d", "t")
    metrics = CallMetricsInterceptor(durations, [], label_limit=2)
    for index in range(5):
        metrics.record("CallObject", _Request(f"T{index}", f"m{index}"), grpc.StatusCode.OK, 0.1)
    assert durations.counts() == {
        ("OK", "m0", "T0", "CallObject"): 1,
        ("OK", "m1", "T1", "CallObject"): 1,
        ("OK", OTHER, OTHER, "CallObject"): 3,
    }
