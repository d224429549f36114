"""Node runtime: what hosted objects use to call other objects, push and broadcast."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import timedelta
from typing import TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

from goverse import wire
from goverse.errors import (
    CallError,
    FailedPrecondition,
    GoverseError,
    ResourceExhausted,
    ShardNotServed,
)
from goverse.ids import validate_method, validate_object_ref
from goverse.node._call_context import (
    MAX_CHAIN_DEPTH,
    caller_message,
    chain_metadata,
    chain_refs,
    current_chain,
    deadline_after,
    remaining,
)
from goverse.node._gate_streams import GateStreams
from goverse.node._object_host import ObjectHost
from goverse.objects import Caller
from goverse.placement import shard_of
from goverse.server import ClusterView, NodeCalls, Routing
from goverse.transport import ChannelPool
from goverse.v1 import node_pb2

M = TypeVar("M", bound=Message)


class NodeRuntime:
    """Implements :class:`goverse.objects.ObjectRuntime` for the objects of one node.

    :meth:`call_object` routes the call to the owner of the callee's shard in `view`, through
    :class:`~goverse.server.Routing` as gates do (held while the shard has no owner or its
    owner is not reachable yet, sent again when a node refused it for its shard): to the local
    :class:`ObjectHost` without gRPC when this node owns it, else over `calls`, this node's
    ``NodeService.Calls`` stream to the owner (one per node, as a gate's; the call chain in
    the frame). The call runs under the
    deadline of the call being served, or `call_timeout` when that has none. Any failure
    reaches the calling object as a :class:`goverse.errors.CallError` with the callee's status
    code, except a call to an object already serving this call chain, refused at once with
    FAILED_PRECONDITION (it would wait for its own turn forever). When the deadline passes,
    the callee's method is cancelled wherever it runs, as gRPC does for a remote call.
    """

    def __init__(
        self,
        host: ObjectHost,
        gates: GateStreams,
        pool: ChannelPool,
        calls: NodeCalls,
        view: ClusterView,
        node: str,
        call_timeout: timedelta,
    ) -> None:
        self._host = host
        self._gates = gates
        self._calls = calls
        self._routing = Routing(view, pool, local=node)
        self._node = node
        self._call_timeout = call_timeout.total_seconds()

    async def call_object(
        self,
        caller: Caller,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        response_type: type[M],
    ) -> M:
        try:
            validate_object_ref(object_type, object_id)
            validate_method(method)
        except GoverseError as error:
            raise CallError(error.status_code, error.message) from error
        key = (object_type, object_id)
        chain = current_chain()
        if key in chain:
            raise FailedPrecondition(
                f"calling {object_type}/{object_id} from its own call chain "
                f"({' -> '.join(f'{t}/{i}' for t, i in chain)}) would wait for its own turn"
            )
        if len(chain) >= MAX_CHAIN_DEPTH:
            raise ResourceExhausted(f"the call chain is deeper than {MAX_CHAIN_DEPTH} objects")
        timeout = remaining()
        if timeout is None:
            timeout = self._call_timeout
        if timeout <= 0:
            raise CallError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"no time left to call {object_type}/{object_id}.{method}",
            )
        packed = wire.pack(request)

        async def send(address: str, budget: float) -> any_pb2.Any:
            if address == self._node:
                return await self._call_local(caller, key, method, packed, budget)
            return await self._call_remote(address, caller, key, method, packed, budget)

        response = await self._routing.call(shard_of(object_type, object_id), send, timeout)
        try:
            return wire.unpack(response, response_type)
        except wire.UnpackError as error:
            raise CallError(
                grpc.StatusCode.INTERNAL, f"{object_type}.{method} answered: {error}"
            ) from None

    async def _call_local(
        self,
        caller: Caller,
        key: tuple[str, str],
        method: str,
        request: any_pb2.Any,
        timeout: float,
    ) -> any_pb2.Any:
        try:
            async with asyncio.timeout(timeout) as scope:
                with deadline_after(timeout):
                    return await self._host.invoke(key[0], key[1], method, request, caller)
        except TimeoutError as error:
            if scope.expired():
                raise CallError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"{key[0]}/{key[1]}.{method} did not answer within {timeout:.3g}s",
                ) from error
            raise
        except (CallError, ShardNotServed):
            raise  # a refusal for the shard is routing's to retry
        except GoverseError as error:
            raise CallError(error.status_code, error.message) from error

    async def _call_remote(
        self,
        owner: str,
        caller: Caller,
        key: tuple[str, str],
        method: str,
        request: any_pb2.Any,
        timeout: float,
    ) -> any_pb2.Any:
        chain = current_chain()
        frame = node_pb2.CallFrame(
            call=node_pb2.NodeCallObjectRequest(
                object_type=key[0],
                object_id=key[1],
                method=method,
                request=request,
                caller=caller_message(caller),
            ),
            chain=chain_refs(chain),
        )
        # A failure (a CallError, NotSent) is routing's to judge: sent again when the node
        # refused the shard or the call never left, else answered with the node's status.
        reply = await self._calls.call(owner, frame, timeout, lambda: chain_metadata(chain))
        return reply.call.response

    def push(self, client_ids: Iterable[str], message: Message) -> int:
        return self._gates.push(client_ids, message)

    def broadcast(self, message: Message) -> int:
        return self._gates.broadcast(message)


__all__ = ["NodeRuntime"]
