"""Fixtures of the node's unit tests: configs, in-process nodes on loopback, gRPC stubs."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from goverse.node import NodeApp, NodeConfig
from goverse.placement import Placement
from goverse.v1 import node_pb2, node_pb2_grpc
from goverse.wire import pack, unpack
from tests.unit.node.sample_objects import Fragile, Meeting, Tally

OBJECT_MODULES = (
    "goverse.examples.counter",
    "goverse.examples.chat",
    "tests.helpers.objects",
    "tests.unit.node.sample_objects",
)
NODE = "127.0.0.1:7000"


def node_config(**overrides: Any) -> NodeConfig:
    """A single-node config listening on a free loopback port; every object is local."""
    base = NodeConfig(
        listen="127.0.0.1:0",
        advertise=NODE,
        nodes=(NODE,),
        objects=OBJECT_MODULES,
        shutdown_timeout=timedelta(seconds=5),
    )
    return dataclasses.replace(base, **overrides)


def id_owned_by(placement: Placement, object_type: str, node: str, prefix: str = "obj") -> str:
    """The first id `<prefix>-<n>` that placement gives to `node`."""
    for n in range(10_000):
        object_id = f"{prefix}-{n}"
        if placement.node_for(object_type, object_id) == node:
            return object_id
    raise AssertionError(f"no {object_type} id owned by {node}")


class Node:
    """A started in-process NodeApp and an aio stub connected to it."""

    def __init__(self, app: NodeApp, channel: grpc.aio.Channel) -> None:
        self.app = app
        self.channel = channel
        self.stub: Any = node_pb2_grpc.NodeServiceStub(channel)

    async def call(
        self,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        response_type: type[Message],
        client_id: str = "",
        timeout: float | None = 10.0,
    ) -> Any:
        reply = await self.stub.CallObject(
            node_pb2.NodeCallObjectRequest(
                object_type=object_type,
                object_id=object_id,
                method=method,
                request=pack(request),
                caller=node_pb2.Caller(client_id=client_id),
            ),
            timeout=timeout,
        )
        return unpack(reply.response, response_type)

    async def status(self) -> node_pb2.StatusResponse:
        reply: node_pb2.StatusResponse = await self.stub.Status(node_pb2.StatusRequest(), timeout=5)
        return reply


@pytest.fixture(autouse=True)
def _reset_sample_objects() -> None:
    Tally.reset()
    Meeting.reset()
    Fragile.fail_next = True


@pytest.fixture
async def start_node() -> AsyncIterator[Callable[..., Any]]:
    """Starts in-process nodes (``await start_node(**config_overrides)``); stops them all,
    and closes their channels, at the end of the test."""
    started: list[Node] = []

    async def start(**overrides: Any) -> Node:
        app = NodeApp(node_config(**overrides))
        await app.start()
        channel = grpc.aio.insecure_channel(app.address)
        node = Node(app, channel)
        started.append(node)
        return node

    yield start
    for node in started:
        await node.channel.close()
        await node.app.stop()


@pytest.fixture
async def node(start_node: Callable[..., Any]) -> Node:
    """One started single-node NodeApp."""
    started: Node = await start_node()
    return started
