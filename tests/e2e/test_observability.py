"""Observability on real processes: one trace per call across client, gate and nodes, pushes
linked to their deliveries, log lines that carry the trace, and metrics that count the traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue
from opentelemetry import trace

from goverse.client import CallError, Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.addresses import dead_address
from tests.helpers.cluster import Cluster, start_cluster
from tests.helpers.processes import ProcessGroup, ServiceProcess, health_status, process_group
from tests.helpers.pushes import Inbox
from tests.helpers.telemetry import (
    OtlpReceiver,
    Samples,
    Span,
    SpanCapture,
    otel_env,
    sample,
    scrape,
    span_capture,
)
from tests.helpers.waiting import wait_until

DOC = Path(__file__).resolve().parents[2] / "docs" / "observability.md"
CALL = "/goverse.v1.GateService/CallObject"
NODE_CALL = "/goverse.v1.NodeService/CallObject"
METRICS_ON = "--metrics-port=0"
"""Metrics on a free port each service picks and reports in its ready file."""


@dataclass
class Observed:
    """A cluster whose services export spans to `receiver` and serve metrics."""

    cluster: Cluster
    receiver: OtlpReceiver | None

    @property
    def node_metrics(self) -> list[int]:
        """The nodes' metrics ports, in the order of ``cluster.nodes``."""
        return [proc.metrics_port for proc in self.cluster.nodes]

    @property
    def gate_metrics(self) -> list[int]:
        return [proc.metrics_port for proc in self.cluster.gates]


def start_observed(
    group: ProcessGroup,
    env: dict[str, str],
    *,
    nodes: int = 2,
    node_extra: tuple[str, ...] = (),
    gate_extra: tuple[str, ...] = (),
    receiver: OtlpReceiver | None = None,
) -> Observed:
    """`nodes` nodes and one gate (``gate-0``), each with `env` and a metrics endpoint on a
    port of its choosing (read from its ready file)."""
    cluster = start_cluster(
        group,
        gate_extra=(*gate_extra, METRICS_ON),
        node_extra=(*node_extra, METRICS_ON),
        nodes=nodes,
        env=env,
    )
    return Observed(cluster, receiver)


@pytest.fixture(scope="module", autouse=True)
def sdk_tracer_provider() -> None:
    """The tests start spans of their own to follow a call's trace, which need an SDK tracer
    provider as the global one (the first span_capture() installs it): whichever test runs
    first, alone or in any order, not only after one that captured spans."""
    span_capture()


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """Two nodes and a gate exporting to an in-process OTLP receiver, logging at debug."""
    receiver = OtlpReceiver().start()
    try:
        with process_group(tmp_path_factory.mktemp("observed")) as group:
            yield start_observed(
                group,
                otel_env(receiver),
                node_extra=("--log-level=debug",),
                gate_extra=("--log-level=debug",),
                receiver=receiver,
            )
    finally:
        receiver.stop()


async def connected(observed: Observed, clients: list[Client]) -> Client:
    client = observed.cluster.client()
    clients.append(client)
    await client.connect()
    return client


def hex_ids(span: trace.Span) -> tuple[str, str]:
    context = span.get_span_context()
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def one(spans: list[Span], **fields: str) -> Span:
    found = [s for s in spans if all(getattr(s, key) == value for key, value in fields.items())]
    assert len(found) == 1, f"expected one span with {fields}, found {found}"
    return found[0]


async def spans_of(observed: Observed, trace_id: str, *wanted: tuple[str, str]) -> list[Span]:
    """The received spans of `trace_id`, once every (service, name) in `wanted` is there."""
    assert observed.receiver is not None

    def arrived(spans: list[Span]) -> bool:
        have = {(s.service, s.name) for s in spans if s.trace_id == trace_id}
        return set(wanted) <= have

    spans = await asyncio.to_thread(observed.receiver.wait_for, arrived, 30.0, f"{wanted}")
    return [s for s in spans if s.trace_id == trace_id]


async def test_one_call_is_one_trace_from_client_through_gate_to_object(
    observed: Observed, clients: list[Client], captured_spans: SpanCapture
) -> None:
    """Client span → gate server span → gate client span → node server span → object span,
    all in the caller's trace, each the parent of the next."""
    client = await connected(observed, clients)
    with trace.get_tracer("test").start_as_current_span("test call") as root:
        await client.call("Counter", "traced-1", "Increment", IncrementRequest(by=1), CounterValue)
    trace_id, root_id = hex_ids(root)
    spans = await spans_of(
        observed,
        trace_id,
        ("goverse-gate", CALL),
        ("goverse-gate", NODE_CALL),
        ("goverse-node", NODE_CALL),
        ("goverse-node", "Counter.Increment"),
    )
    sdk = one(captured_spans.spans, name=CALL, kind="CLIENT")
    gate_server = one(spans, service="goverse-gate", name=CALL, kind="SERVER")
    gate_client = one(spans, service="goverse-gate", name=NODE_CALL, kind="CLIENT")
    node_server = one(spans, service="goverse-node", name=NODE_CALL, kind="SERVER")
    method = one(spans, service="goverse-node", name="Counter.Increment", kind="INTERNAL")
    assert sdk.trace_id == trace_id
    assert sdk.parent_span_id == root_id
    assert gate_server.parent_span_id == sdk.span_id
    assert gate_client.parent_span_id == gate_server.span_id
    assert node_server.parent_span_id == gate_client.span_id
    assert method.parent_span_id == node_server.span_id
    owner = observed.cluster.placement.node_for("Counter", "traced-1")
    assert node_server.instance == owner
    assert method.attributes["goverse.object.id"] == "traced-1"


async def test_an_object_calling_an_object_on_another_node_stays_in_the_trace(
    observed: Observed, clients: list[Client]
) -> None:
    cluster = observed.cluster
    first, second = cluster.node_addresses
    relay = cluster.ids_owned_by(first, "Relay", 1, "relay")[0]
    counter = cluster.ids_owned_by(second, "Counter", 1, "relayed")[0]
    client = await connected(observed, clients)
    with trace.get_tracer("test").start_as_current_span("test call") as root:
        await client.call(
            "Relay", relay, "IncrementCounter", StringValue(value=counter), CounterValue
        )
    trace_id, _ = hex_ids(root)
    spans = await spans_of(
        observed,
        trace_id,
        ("goverse-node", "Relay.IncrementCounter"),
        ("goverse-node", "Counter.Increment"),
    )
    relay_span = one(spans, name="Relay.IncrementCounter")
    outgoing = one(spans, name=NODE_CALL, kind="CLIENT", instance=first)
    incoming = one(spans, name=NODE_CALL, kind="SERVER", instance=second)
    counter_span = one(spans, name="Counter.Increment")
    assert relay_span.instance == first
    assert outgoing.parent_span_id == relay_span.span_id
    assert incoming.parent_span_id == outgoing.span_id
    assert counter_span.parent_span_id == incoming.span_id
    assert counter_span.instance == second


async def test_a_push_delivery_span_links_to_the_pushing_call(
    observed: Observed, clients: list[Client]
) -> None:
    client = await connected(observed, clients)
    inbox = Inbox(client)
    with trace.get_tracer("test").start_as_current_span("test call") as root:
        await client.call(
            "Pusher", "traced-push", "PushToCaller", StringValue(value="hi"), Int64Value
        )
    assert await inbox.next(StringValue) == StringValue(value="hi")
    trace_id, _ = hex_ids(root)
    spans = await spans_of(observed, trace_id, ("goverse-node", "Pusher.PushToCaller"))
    pushing = one(spans, name="Pusher.PushToCaller")
    assert observed.receiver is not None

    def delivered(all_spans: list[Span]) -> bool:
        return any((trace_id, pushing.span_id) in s.links for s in all_spans)

    received = await asyncio.to_thread(observed.receiver.wait_for, delivered, 30.0, "delivery")
    (delivery,) = [s for s in received if (trace_id, pushing.span_id) in s.links]
    assert (delivery.service, delivery.name, delivery.kind) == (
        "goverse-gate",
        "goverse.push.deliver",
        "CONSUMER",
    )
    assert delivery.trace_id != trace_id
    assert delivery.attributes["goverse.push.accepted"] == 1


async def test_health_checks_produce_no_spans(observed: Observed, clients: list[Client]) -> None:
    """Checks against every process, then a call through all of them: by the time the call's
    spans arrived, none for a health check had (and none arrived since start)."""
    cluster = observed.cluster
    for proc in [*cluster.nodes, *cluster.gates]:
        for service in ("", "goverse.v1.GateService", "goverse.v1.NodeService"):
            await asyncio.to_thread(health_status, proc.address, service)
    first, second = cluster.node_addresses
    relay = cluster.ids_owned_by(first, "Relay", 1, "health-relay")[0]
    counter = cluster.ids_owned_by(second, "Counter", 1, "health-counter")[0]
    client = await connected(observed, clients)
    with trace.get_tracer("test").start_as_current_span("marker") as root:
        await client.call(
            "Relay", relay, "IncrementCounter", StringValue(value=counter), CounterValue
        )
    await spans_of(
        observed,
        hex_ids(root)[0],
        ("goverse-gate", CALL),
        ("goverse-node", "Relay.IncrementCounter"),
        ("goverse-node", "Counter.Increment"),
    )
    assert observed.receiver is not None
    names = {span.name for span in observed.receiver.spans()}
    assert not [name for name in names if "health" in name.lower()]


async def test_log_lines_written_during_a_traced_call_carry_its_trace_id(
    observed: Observed, clients: list[Client]
) -> None:
    """The node logs the activation (debug) and the failing method (error) inside the call's
    spans, the gate logs the failed node call (debug): all with the caller's trace id."""
    client = await connected(observed, clients)
    with (
        trace.get_tracer("test").start_as_current_span("test call") as root,
        pytest.raises(CallError),
    ):
        await client.call("Failing", "traced-failure", "Raise", Empty(), Empty)
    trace_id, _ = hex_ids(root)
    node = next(
        proc
        for proc in observed.cluster.nodes
        if proc.address == observed.cluster.placement.node_for("Failing", "traced-failure")
    )
    gate = observed.cluster.gates[0]

    def lines_of(proc: ServiceProcess, event: str) -> list[dict[str, object]]:
        return [
            line
            for line in proc.log_lines()
            if line.get("event") == event and line.get("trace_id") == trace_id
        ]

    await asyncio.to_thread(
        wait_until,
        lambda: lines_of(node, "object method raised") and lines_of(gate, "node call failed"),
        10,
    )
    for line in [
        *lines_of(node, "object activated"),
        *lines_of(node, "object method raised"),
        *lines_of(gate, "node call failed"),
    ]:
        assert isinstance(line["span_id"], str)
        assert len(line["span_id"]) == 16
    assert lines_of(node, "object activated"), "the activation was not logged in the trace"
    traced = [line for line in node.log_lines() if line.get("trace_id") == trace_id]
    assert {line["object_id"] for line in traced if "object_id" in line} == {"traced-failure"}


async def test_metrics_count_calls_pushes_objects_and_links(
    observed: Observed, clients: list[Client]
) -> None:
    cluster = observed.cluster
    gate_port = observed.gate_metrics[0]
    owner = cluster.placement.node_for("Pusher", "metrics-pusher")
    node_port = observed.node_metrics[cluster.node_addresses.index(owner)]
    gate_before = await asyncio.to_thread(scrape, gate_port)
    node_before = await asyncio.to_thread(scrape, node_port)
    client = await connected(observed, clients)
    inbox = Inbox(client)
    pushes = 7
    for index in range(pushes):
        await client.call(
            "Pusher", "metrics-pusher", "PushToCaller", StringValue(value=str(index)), Int64Value
        )
    for index in range(pushes):
        assert await inbox.next(StringValue) == StringValue(value=str(index))
    # The gate labels a failed call with the names its catalog knows: a Describe waits for
    # its first refresh, should the gate have just started.
    await client.describe()
    with pytest.raises(CallError):
        await client.call("Failing", "metrics-failure", "Raise", Empty(), Empty)
    gate = await asyncio.to_thread(scrape, gate_port)
    node = await asyncio.to_thread(scrape, node_port)

    def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    calls = {"rpc": "CallObject", "object_type": "Pusher", "method": "PushToCaller", "code": "OK"}
    assert delta(gate, gate_before, "goverse_gate_call_duration_seconds_count", **calls) == pushes
    assert delta(node, node_before, "goverse_node_call_duration_seconds_count", **calls) == pushes
    failed = {"object_type": "Failing", "code": "INTERNAL"}
    assert delta(gate, gate_before, "goverse_gate_call_duration_seconds_count", **failed) == 1
    assert delta(gate, gate_before, "goverse_gate_pushes_delivered_total") == pushes
    assert delta(node, node_before, "goverse_node_pushes_queued_total") == pushes
    assert delta(node, node_before, "goverse_node_objects_active", object_type="Pusher") == 1
    assert sample(gate, "goverse_gate_node_links", state="connected") == 2
    assert sample(gate, "goverse_gate_node_link_reconnects_total") == 0
    assert sample(gate, "goverse_gate_clients") >= 1
    assert sample(node, "goverse_node_gate_streams") == 1
    assert sample(gate, "goverse_gate_pushes_dropped_total") == 0
    documented = DOC.read_text()
    for name, _ in [*gate, *node]:
        base = name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        if base.startswith("goverse_"):
            assert f"`{base}`" in documented, f"{base} is not in {DOC.name}"


async def test_queue_overflows_are_counted_per_gate_and_as_one_slow_consumer(
    processes: ProcessGroup, clients: list[Client]
) -> None:
    """50 pushes in one turn: the node's queue for the gate takes 20 and drops 30; the gate
    delivers them to a client whose queue holds 5, which disconnects it as a slow consumer.

    The call's reply travels on the client's Session stream, the one the disconnect ends: when
    the pushes reach the gate before the reply, the call fails with UNAVAILABLE like any call
    in flight on a stream that ends (the node's counters say it ran and queued 20)."""
    observed = start_observed(
        processes,
        {},
        nodes=1,
        node_extra=("--gate-queue-size=20",),
        gate_extra=("--client-queue-messages=5",),
    )
    client = await connected(observed, clients)
    try:
        queued = await client.call("Pusher", "flood", "PushMany", Int64Value(value=50), Int64Value)
    except CallError as error:
        code = error.status_code
    else:
        code = grpc.StatusCode.OK
        assert queued.value == 20
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE)
    node_port, gate_port = observed.node_metrics[0], observed.gate_metrics[0]

    def settled() -> bool:
        return sample(scrape(gate_port), "goverse_gate_slow_consumer_disconnects_total") >= 1

    await asyncio.to_thread(wait_until, settled, 15)
    node = await asyncio.to_thread(scrape, node_port)
    gate = await asyncio.to_thread(scrape, gate_port)
    assert (
        sample(node, "goverse_node_pushes_dropped_total", reason="queue_full", gate_id="gate-0")
        == 30
    )
    assert sample(node, "goverse_node_pushes_queued_total") == 20
    assert sample(gate, "goverse_gate_slow_consumer_disconnects_total") == 1
    assert sample(gate, "goverse_gate_pushes_delivered_total") == 5


async def _timed_calls(cluster: Cluster, count: int) -> float:
    async with cluster.client() as client:
        await client.call("Counter", "warm", "Increment", IncrementRequest(by=1), CounterValue)
        started = time.perf_counter()
        for _ in range(count):
            await client.call("Counter", "timed", "Increment", IncrementRequest(by=1), CounterValue)
        return time.perf_counter() - started


def _complaints(procs: list[ServiceProcess]) -> list[dict[str, object]]:
    return [
        line
        for proc in procs
        for line in proc.log_lines()
        if line.get("level") in ("warning", "error", "critical")
    ]


@pytest.mark.slow
async def test_without_a_collector_tracing_neither_slows_calls_nor_logs_errors(
    tmp_path: Path,
) -> None:
    """``OTEL_TRACES_EXPORTER=none``: not one warning. OTLP towards a port nobody serves: calls
    are as fast (export runs in the background), the services themselves complain of nothing,
    and the exporter's complaints are few, not one per call or per export."""
    with process_group(tmp_path / "none") as group:
        quiet = start_observed(group, {"OTEL_TRACES_EXPORTER": "none"}, nodes=1)
        none_seconds = await _timed_calls(quiet.cluster, 200)
        assert _complaints([*quiet.cluster.nodes, *quiet.cluster.gates]) == []
    with dead_address() as collector, process_group(tmp_path / "dead") as group:
        dead = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{collector}",  # nothing listens
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        unreachable = start_observed(group, dead, nodes=1)
        procs = [*unreachable.cluster.nodes, *unreachable.cluster.gates]
        dead_seconds = await _timed_calls(unreachable.cluster, 200)
        # Exports have failed meanwhile (each batch every 100 ms); calls go on regardless.
        await asyncio.to_thread(wait_until, lambda: len(_complaints(procs)) >= len(procs), 15)
        await _timed_calls(unreachable.cluster, 200)
        complaints = _complaints(procs)
    assert {line["logger"] for line in complaints} <= {
        "opentelemetry.exporter.otlp.proto.grpc.exporter"
    }, complaints
    for proc in procs:
        own = [line for line in complaints if line["service"] == proc.name.split("-")[0]]
        assert len(own) <= 4, own
    assert dead_seconds < max(none_seconds * 2, none_seconds + 1.0), (none_seconds, dead_seconds)
