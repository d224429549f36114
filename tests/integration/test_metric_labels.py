"""Metric labels from caller input on real gate and node processes: object types and methods
nobody serves, sent over every way a call arrives, all count as ``_other``; the types and
methods served keep their own labels whatever came before."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.empty_pb2 import Empty

from goverse.client import Client
from goverse.errors import CallError
from goverse.examples.v1.counter_pb2 import CounterValue, GetRequest
from goverse.v1 import gate_pb2
from tests.helpers.call_stream import RawCallStream, call_frame
from tests.helpers.gate_client import WAIT, GateClient
from tests.helpers.node_client import NodeCaller
from tests.helpers.processes import ProcessGroup, ServiceProcess
from tests.helpers.telemetry import Samples, scrape

GARBAGE = 250
"""Made-up names per way in: more than the 200 distinct values a label used to admit before
the names that are served were reported as ``_other`` too."""
AT_ONCE = 25
"""Garbage calls in flight together (bounded, so a loaded machine keeps up)."""
SERVED_TYPES = {"Counter"}
"""Types the probe calls for real: only they, ``_other`` and "" (Describe) may label a call."""


@dataclass
class Cluster:
    node: ServiceProcess
    gate: ServiceProcess
    http: str


@pytest.fixture
async def cluster(processes: ProcessGroup) -> Cluster:
    node = await asyncio.to_thread(processes.node, extra=["--metrics-port=0"])
    gate = await asyncio.to_thread(
        processes.gate,
        "labels",
        [node.address],
        ["--metrics-port=0", "--http-listen=127.0.0.1:0"],
    )
    assert gate.ready is not None
    return Cluster(node, gate, f"http://{gate.ready.identity['http']}")


async def _refused(call: Callable[[int], Awaitable[Any]]) -> None:
    """Makes `GARBAGE` calls, the `i`-th ``call(i)``, `AT_ONCE` at a time; each must fail
    (their names are made up)."""

    async def one(index: int) -> None:
        with pytest.raises((CallError, grpc.aio.AioRpcError)):
            await call(index)

    for start in range(0, GARBAGE, AT_ONCE):
        await asyncio.gather(*(one(i) for i in range(start, min(start + AT_ONCE, GARBAGE))))


def _call_labels(samples: Samples, name: str) -> set[tuple[str, str, str]]:
    """(rpc, object_type, method) of every `name` series."""
    found = set()
    for (sample_name, labels), _ in samples.items():
        if sample_name == name:
            named = dict(labels)
            found.add((named["rpc"], named["object_type"], named["method"]))
    return found


async def test_made_up_types_and_methods_count_as_other_and_served_ones_keep_their_labels(
    cluster: Cluster,
) -> None:
    """Hundreds of made-up object types and methods sent to the gate as unary calls, on an
    SDK Session, over HTTP, and straight to the node as unary calls and on a Calls stream:
    each is refused, and the gate's and node's call durations count them all under
    ``_other``; calls to the types and methods served, made afterwards, are counted under
    their own names."""
    async with Client([cluster.gate.address]) as client:
        await client.describe(timeout=WAIT)  # the gate's catalog knows the node's types now
        unary = await GateClient(cluster.gate.address).connect()
        try:
            await _refused(
                lambda i: unary.stub.CallObject(
                    gate_pb2.CallObjectRequest(
                        object_type=f"Made{i}", object_id="x", method=f"Up{i}"
                    ),
                    metadata=unary.metadata(),
                    timeout=WAIT,
                )
            )
            await _refused(
                lambda i: client.call(
                    "Counter", "x", f"NoSuch{i}", GetRequest(), CounterValue, timeout=WAIT
                )
            )
            await _refused(
                lambda i: client.call(
                    f"Session{i}", "x", f"Up{i}", GetRequest(), CounterValue, timeout=WAIT
                )
            )
        finally:
            await unary.close()
        timeout = aiohttp.ClientTimeout(total=WAIT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for i in range(GARBAGE):
                async with http.put(f"{cluster.http}/v1/objects/Http{i}/x") as response:
                    assert response.status == 404, await response.text()
        async with NodeCaller(cluster.node.address) as node:
            await _refused(lambda i: node.call(f"Direct{i}", "x", f"Up{i}", Empty(), Empty))
        async with RawCallStream(cluster.node.address) as stream:
            ids = [stream.next_id() for _ in range(GARBAGE)]
            await stream.send(
                *(
                    call_frame(call_id, f"Stream{n}", "x", f"Up{n}", Empty())
                    for n, call_id in enumerate(ids)
                )
            )
            for call_id in ids:
                reply = await stream.reply(call_id)
                assert reply.error.code == grpc.StatusCode.NOT_FOUND.value[0], reply

        # What is served, after all that: over the Session, and a unary call to the node.
        assert (
            await client.call("Counter", "served", "Get", GetRequest(), CounterValue)
        ).value == 0
    async with NodeCaller(cluster.node.address) as node:
        await node.call("Counter", "served", "Get", GetRequest(), CounterValue)

    gate = await asyncio.to_thread(scrape, cluster.gate.metrics_port)
    node_samples = await asyncio.to_thread(scrape, cluster.node.metrics_port)
    for samples, name in [
        (gate, "goverse_gate_call_duration_seconds_count"),
        (node_samples, "goverse_node_call_duration_seconds_count"),
    ]:
        labels = _call_labels(samples, name)
        assert ("CallObject", "Counter", "Get") in labels, (name, sorted(labels))
        types = {object_type for _, object_type, _ in labels}
        assert types <= SERVED_TYPES | {"_other", ""}, (name, sorted(types))
        methods = {method for _, _, method in labels}
        assert methods <= {"Get", "_other", ""}, (name, sorted(methods))
