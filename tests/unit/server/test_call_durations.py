"""CallDurations: the served calls' duration histogram, as Prometheus reads it."""

from __future__ import annotations

import grpc
from prometheus_client import CollectorRegistry, generate_latest

from goverse.server import CallDurations, CallMetricsInterceptor, KnownNames
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


def test_names_not_served_count_as_other_and_served_ones_keep_their_labels() -> None:
    """A client can name any object type and method: thousands of made-up ones (a type, a
    method a known type lacks, a name of 4 MiB) all count as ``_other``, and the served ones,
    recorded after them, keep their own labels; creates and deletes keep their empty method."""
    durations = CallDurations("t.d", "t")
    metrics = CallMetricsInterceptor(
        durations, [], names=KnownNames({"Counter": ["Get", "Increment"]})
    )
    for index in range(1000):
        for made_up in (_Request(f"T{index}", f"m{index}"), _Request("Counter", f"m{index}")):
            metrics.record("CallObject", made_up, grpc.StatusCode.NOT_FOUND, 0.1)
    huge = _Request("x" * 4 * 2**20, "y" * 2**20)
    metrics.record("CallObject", huge, grpc.StatusCode.INVALID_ARGUMENT, 0.1)
    metrics.record("CallObject", _Request("Counter", "Get"), grpc.StatusCode.OK, 0.1)
    metrics.record("CreateObject", _Request("Counter", ""), grpc.StatusCode.OK, 0.1)
    metrics.record("DeleteObject", _Request("Gone", ""), grpc.StatusCode.NOT_FOUND, 0.1)
    assert durations.counts() == {
        ("NOT_FOUND", OTHER, OTHER, "CallObject"): 1000,
        ("INVALID_ARGUMENT", OTHER, OTHER, "CallObject"): 1,
        ("NOT_FOUND", OTHER, "Counter", "CallObject"): 1000,
        ("OK", "Get", "Counter", "CallObject"): 1,
        ("OK", "", "Counter", "CreateObject"): 1,
        ("NOT_FOUND", "", OTHER, "DeleteObject"): 1,
    }


def test_a_call_answered_ok_teaches_its_names_and_nothing_else_does() -> None:
    """Names no one described yet (a gate before its first catalog refresh) are learned from
    a call answered OK, which only a node serving them gives; a refused call, or another RPC
    answered OK (ListObjects takes any type), teaches nothing."""
    durations = CallDurations("t.d", "t")
    metrics = CallMetricsInterceptor(durations, [])
    metrics.record("CallObject", _Request("Counter", "Get"), grpc.StatusCode.UNIMPLEMENTED, 0.1)
    metrics.record("ListObjects", _Request("Listed", ""), grpc.StatusCode.OK, 0.1)
    metrics.record("CallObject", _Request("Listed", "Get"), grpc.StatusCode.NOT_FOUND, 0.1)
    metrics.record("CallObject", _Request("Counter", "Get"), grpc.StatusCode.OK, 0.1)
    metrics.record("CallObject", _Request("Counter", "Get"), grpc.StatusCode.INTERNAL, 0.1)
    metrics.record("CallObject", _Request("Counter", "Nope"), grpc.StatusCode.UNIMPLEMENTED, 0.1)
    assert durations.counts() == {
        ("UNIMPLEMENTED", OTHER, OTHER, "CallObject"): 1,
        ("OK", "", OTHER, "ListObjects"): 1,
        ("NOT_FOUND", OTHER, OTHER, "CallObject"): 1,
        ("OK", "Get", "Counter", "CallObject"): 1,
        ("INTERNAL", "Get", "Counter", "CallObject"): 1,
        ("UNIMPLEMENTED", OTHER, "Counter", "CallObject"): 1,
    }


def test_requests_without_names_keep_empty_labels() -> None:
    """An RPC whose request names no type or method (Status, Describe) is labelled with
    empty values, not ``_other``."""
    durations = CallDurations("t.d", "t")
    metrics = CallMetricsInterceptor(durations, [])
    metrics.record("Status", object(), grpc.StatusCode.OK, 0.1)
    assert durations.counts() == {("OK", "", "", "Status"): 1}
