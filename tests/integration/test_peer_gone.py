"""A peer that leaves while a write to it is pending is an expected end: gate and node log it
as one DEBUG line, never grpc's ERROR "ExecuteBatchError" with a traceback."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import grpc
from google.protobuf.wrappers_pb2 import Int64Value

from goverse import wire
from goverse.v1 import gate_pb2, node_pb2, node_pb2_grpc
from tests.helpers.call_stream import call_frame
from tests.helpers.gate_client import WAIT, GateClient
from tests.helpers.processes import ProcessGroup, ServiceProcess, serving
from tests.helpers.telemetry import sample, scrape
from tests.helpers.waiting import eventually

STALLED = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16 * 1024)]
"""A client transport that takes in little unread data: a write of a large message to it
stays pending while it does not read (HTTP/2 flow control)."""
LARGE = 3 * 1024 * 1024
"""Far more than a stalled client's flow-control window, below the 4 MiB message limit."""
QUIETED = "peer went away with a write pending"
ROUNDS = 5
"""Whether grpc sees the failed write or the peer's close first is a race: the write first, it
logged ERROR (now the quiet line); the close first, it cancels the handler ("RPC cancelled",
DEBUG). Each test probes several times and waits until every probe ended one way or the other;
the filter itself is tested deterministically in tests/unit/server/test_telemetry.py."""


def _errors(proc: ServiceProcess) -> list[dict[str, Any]]:
    return [line for line in proc.log_lines() if line.get("level") in ("error", "critical")]


def _ended(proc: ServiceProcess, method: str) -> int:
    """Calls of `method` that ended because their peer left, either way (see ROUNDS)."""
    cancelled = f"RPC cancelled for servicer method [{method}]"
    return sum(
        1
        for line in proc.log_lines()
        if (line["event"] == QUIETED and line.get("rpc") == method) or line["event"] == cancelled
    )


async def test_a_node_logs_no_error_when_a_gate_leaves_with_a_reply_pending(
    processes: ProcessGroup,
) -> None:
    """A Calls stream whose peer stops reading gets a 3 MiB reply; once the reply's headers
    arrived (the write is under way) the peer closes its channel. Each stream ends with a DEBUG
    line, none with an ERROR, and the node keeps serving."""
    node = await asyncio.to_thread(processes.node, extra=["--log-level=debug"])
    for round_ in range(ROUNDS):
        async with grpc.aio.insecure_channel(node.address, options=STALLED) as channel:
            stub: Any = node_pb2_grpc.NodeServiceStub(channel)
            call = stub.Calls(metadata=((wire.GATE_ID_KEY, f"leaving-{round_}"),), timeout=WAIT)
            frame = call_frame(1, "Blob", "b", "Make", Int64Value(value=LARGE))
            await call.write(node_pb2.CallFrames(calls=[frame]))
            async with asyncio.timeout(WAIT):
                await call.initial_metadata()  # sent with the first reply: the write is pending
    method = "/goverse.v1.NodeService/Calls"
    await eventually(lambda: _ended(node, method) >= ROUNDS, WAIT, "every stream to end")
    assert _errors(node) == []
    assert "ExecuteBatchError" not in node.output()
    assert await asyncio.to_thread(serving, node.address, wire.NODE_SERVICE)


async def test_a_gate_logs_no_error_when_a_client_leaves_with_a_push_pending(
    processes: ProcessGroup,
) -> None:
    """A registered client stops reading and is pushed 3 MiB; once the gate took the push off
    the client's queue to write it, the client closes its channel. Each stream ends with a DEBUG
    line, none with an ERROR, and the gate keeps serving."""
    [address] = processes.node_addresses(1)
    await asyncio.to_thread(processes.node, address, [address])
    gate = await asyncio.to_thread(
        processes.gate, "left", [address], ["--log-level=debug", "--metrics-port=0"]
    )
    for round_ in range(ROUNDS):
        client = await GateClient(gate.address, options=list(STALLED)).connect()
        try:
            await client.stub.CallObject(
                gate_pb2.CallObjectRequest(
                    object_type="Blob",
                    object_id=f"b{round_}",
                    method="PushToCaller",
                    request=wire.pack(Int64Value(value=LARGE)),
                ),
                metadata=client.metadata(),
                timeout=WAIT,
            )
            await eventually(
                functools.partial(_push_taken, gate, round_ + 1), WAIT, "the push to be written"
            )
        finally:
            await client.close()
    method = "/goverse.v1.GateService/Register"
    await eventually(lambda: _ended(gate, method) >= ROUNDS, WAIT, "every stream to end")
    assert _errors(gate) == []
    assert "ExecuteBatchError" not in gate.output()
    assert await asyncio.to_thread(serving, gate.address, wire.GATE_SERVICE)


def _push_taken(gate: ServiceProcess, delivered: int) -> bool:
    """Whether the gate queued `delivered` pushes for clients so far and none waits in a
    queue: the last one is being written."""
    samples = scrape(gate.metrics_port)
    return (
        sample(samples, "goverse_gate_pushes_delivered_total") >= delivered
        and sample(samples, "goverse_gate_client_queue_depth") == 0
    )
