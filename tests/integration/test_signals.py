"""Signals: the first SIGTERM stops a service in order; a second one exits at once."""

from __future__ import annotations

import asyncio
import signal

import grpc
from google.protobuf.wrappers_pb2 import Int64Value

from goverse.v1 import node_pb2, node_pb2_grpc
from tests.helpers.processes import ProcessGroup
from tests.helpers.waiting import wait_until


async def test_second_signal_exits_at_once(processes: ProcessGroup) -> None:
    """A node stopping slowly (an object is busy in a long call) exits at once, with
    128 + SIGTERM, on a second SIGTERM."""
    node = processes.node(extra=["--shutdown-timeout=60s"])
    async with grpc.aio.insecure_channel(node.address) as channel:
        request = node_pb2.NodeCallObjectRequest(
            object_type="Sleeper", object_id="s", method="Sleep"
        )
        request.request.Pack(Int64Value(value=60_000))
        stub = node_pb2_grpc.NodeServiceStub(channel)
        call = stub.CallObject(request, timeout=120)
        deadline = asyncio.get_running_loop().time() + 20
        while True:  # until the call is inside the object
            listed = await stub.ListObjects(node_pb2.ListObjectsRequest(object_type="Sleeper"))
            if listed.objects:
                break
            assert asyncio.get_running_loop().time() < deadline, "the Sleeper call never started"
        node.signal(signal.SIGTERM)
        await asyncio.to_thread(
            wait_until,
            lambda: '"stopping"' in node.output(),
            20,
            0.05,
            "the node to start stopping",
        )
        assert node.alive()
        node.signal(signal.SIGTERM)
        code = await asyncio.to_thread(node.process.wait, 10)  # type: ignore[union-attr]
        assert code == 128 + signal.SIGTERM
        call.cancel()
