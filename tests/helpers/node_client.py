"""NodeCaller: calls straight to one node process's NodeService (no gate), many at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from goverse.v1 import node_pb2, node_pb2_grpc
from goverse.wire import pack, unpack

M = TypeVar("M", bound=Message)

CALL_TIMEOUT = 15.0
"""The deadline of each call (generous: a loaded 2-core machine)."""


class NodeCaller:
    """A ``grpc.aio`` NodeService stub on its own channel to the node at `address`; an async
    context manager that closes the channel."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub: Any = node_pb2_grpc.NodeServiceStub(self.channel)

    async def __aenter__(self) -> NodeCaller:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.channel.close()

    async def call(
        self,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        response_type: type[M],
        timeout: float = CALL_TIMEOUT,
    ) -> M:
        """Calls `method` of the object; raises :class:`grpc.aio.AioRpcError` when it fails."""
        reply = await self.stub.CallObject(
            node_pb2.NodeCallObjectRequest(
                object_type=object_type,
                object_id=object_id,
                method=method,
                request=pack(request),
            ),
            timeout=timeout,
        )
        return unpack(reply.response, response_type)

    async def call_each(
        self,
        object_type: str,
        object_ids: Iterable[str],
        method: str,
        request: Message,
        response_type: type[M],
        concurrency: int = 64,
    ) -> dict[str, M]:
        """Calls `method` once on each object, `concurrency` calls in flight at once; returns
        each answer by object id (the first failure fails the whole)."""
        limit = asyncio.Semaphore(concurrency)

        async def one(object_id: str) -> tuple[str, M]:
            async with limit:
                return object_id, await self.call(
                    object_type, object_id, method, request, response_type
                )

        return dict(await asyncio.gather(*(one(object_id) for object_id in object_ids)))

    async def status(self) -> node_pb2.StatusResponse:
        reply: node_pb2.StatusResponse = await self.stub.Status(
            node_pb2.StatusRequest(), timeout=CALL_TIMEOUT
        )
        return reply


__all__ = ["NodeCaller"]
