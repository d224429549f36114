"""Router: forwards a verified client's calls to the node that owns the object's shard."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import timedelta

from google.protobuf import any_pb2

from goverse import ids
from goverse.placement import shard_of
from goverse.server import ALLOW_ALL, AccessGuard, ClusterView, NodeCalls, Operation, Routing
from goverse.transport import ChannelPool
from goverse.v1 import gate_pb2, node_pb2


class Router:
    """Sends each call to the owner of its object's shard in `view`, through
    :class:`~goverse.server.Routing`, over that node's call stream (:class:`NodeCalls`),
    stamped with the caller the gate verified (its client id and principal).

    Ids are validated before anything is sent (:class:`~goverse.errors.InvalidArgument`), and
    the access rules applied to a client's call, create and delete (`access`:
    :class:`~goverse.errors.PermissionDenied`, nothing forwarded). A
    call is held while its shard has no owner or its owner is not reachable yet (or its call
    stream could not take it), and sent again when the node refused it for its shard, within
    the client's deadline (or `call_timeout`); routing gives up a little before the deadline
    with UNAVAILABLE naming the node (or the refusal). A call the node received is never sent
    twice: its error keeps the node's status code and details.
    """

    def __init__(
        self,
        view: ClusterView,
        pool: ChannelPool,
        calls: NodeCalls,
        call_timeout: timedelta,
        access: AccessGuard | None = None,
    ) -> None:
        self._access = access if access is not None else AccessGuard(ALLOW_ALL)
        self._routing = Routing(view, pool)
        self._calls = calls
        self._call_timeout = call_timeout.total_seconds()

    def _timeout(self, time_remaining: float | None) -> float:
        return self._call_timeout if time_remaining is None else max(time_remaining, 0.0)

    async def call_object(
        self,
        caller: node_pb2.Caller,
        request: gate_pb2.CallObjectRequest,
        time_remaining: float | None,
    ) -> any_pb2.Any:
        """The response of `request`'s object (``CallObjectResponse.response``)."""
        ids.validate_object_ref(request.object_type, request.object_id)
        ids.validate_method(request.method)
        self._access.check(
            Operation.CALL,
            request.object_type,
            request.object_id,
            request.method,
            from_object=False,
        )
        # Filled in place: a message given as a constructor argument is copied once more.
        frame = node_pb2.CallFrame()
        call = frame.call
        call.object_type = request.object_type
        call.object_id = request.object_id
        call.method = request.method
        call.request.CopyFrom(request.request)
        call.caller.CopyFrom(caller)
        reply = await self._route(frame, request.object_type, request.object_id, time_remaining)
        return reply.call.response

    async def create_object(
        self,
        caller: node_pb2.Caller,
        request: gate_pb2.CreateObjectRequest,
        time_remaining: float | None,
    ) -> gate_pb2.CreateObjectResponse:
        ids.validate_object_ref(request.object_type, request.object_id)
        self._access.check(
            Operation.CREATE, request.object_type, request.object_id, from_object=False
        )
        frame = node_pb2.CallFrame(
            create=node_pb2.NodeCreateObjectRequest(
                object_type=request.object_type,
                object_id=request.object_id,
                caller=caller,
            )
        )
        reply = await self._route(frame, request.object_type, request.object_id, time_remaining)
        return gate_pb2.CreateObjectResponse(created=reply.create.created)

    async def delete_object(
        self,
        caller: node_pb2.Caller,
        request: gate_pb2.DeleteObjectRequest,
        time_remaining: float | None,
    ) -> gate_pb2.DeleteObjectResponse:
        ids.validate_object_ref(request.object_type, request.object_id)
        self._access.check(
            Operation.DELETE, request.object_type, request.object_id, from_object=False
        )
        frame = node_pb2.CallFrame(
            delete=node_pb2.NodeDeleteObjectRequest(
                object_type=request.object_type,
                object_id=request.object_id,
                caller=caller,
            )
        )
        reply = await self._route(frame, request.object_type, request.object_id, time_remaining)
        return gate_pb2.DeleteObjectResponse(deleted=reply.delete.deleted)

    async def _route(
        self,
        frame: node_pb2.CallFrame,
        object_type: str,
        object_id: str,
        time_remaining: float | None,
    ) -> node_pb2.ReplyFrame:
        """Sends a validated call `frame` to the node that owns its object."""

        def send(node: str, timeout: float) -> Awaitable[node_pb2.ReplyFrame]:
            return self._calls.call(node, frame, timeout)

        shard = shard_of(object_type, object_id)
        return await self._routing.call(shard, send, self._timeout(time_remaining))


__all__ = ["Router"]
