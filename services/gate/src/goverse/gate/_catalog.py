"""Catalog: the gate's cached union of its nodes' descriptions, and the JSON mapping on it.

What ``GateService.Describe`` answers, and what a JSON front end (the HTTP gate) uses to turn
a call's JSON into its request message and the reply back into JSON.

Refresh: the catalog asks every node of the view for its ``NodeService.Describe`` when it
starts, whenever the view changes (a node joined or left), every ``--describe-refresh`` (a
rollout may change a node's code without changing the view), and when a lookup misses (a
type or method it does not know, at most once per :data:`MISS_REFRESH_INTERVAL`, so a
client asking for an unknown type again and again costs no more than that). The refresh is
bounded: one at a time (callers that wanted one meanwhile take its result), each node's
answer within :data:`NODE_TIMEOUT`, and view changes followed at most once per
:data:`MISS_REFRESH_INTERVAL`. A node that does not answer keeps the description it gave
last while it stays in the view; a node that left takes its description with it.

Union: a type two nodes describe differently (mid-rollout) is taken from the node whose
description is newest (``described_unix_ms``: the node that started last, so the new code
wins), and so is a ``.proto`` file both send. If the files of different nodes do not build
one consistent pool, the catalog keeps what it had and logs why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

import grpc
import structlog
from google.protobuf import any_pb2
from google.protobuf.message import Message

from goverse.descriptions import Descriptions, MethodTypes, ordered_files
from goverse.errors import GoverseError, NotFound, Unimplemented
from goverse.server import ClusterView, KnownNames, first_of
from goverse.transport import ChannelPool
from goverse.v1 import describe_pb2, node_pb2_grpc

log = structlog.get_logger(__name__)

TASK_NAME = "describe-catalog"
"""The supervisor's name of the task that keeps the catalog fresh (:meth:`Catalog.run`)."""
NODE_TIMEOUT = 5.0
"""Seconds a refresh waits for one node's Describe (a node just joined may still be starting)."""
MISS_REFRESH_INTERVAL = 1.0
"""Least seconds between two refreshes caused by lookup misses or by view changes."""


def union(responses: list[describe_pb2.DescribeResponse]) -> describe_pb2.DescribeResponse:
    """The union of `responses`: for a type or a file in more than one, the newest's."""
    types: dict[str, describe_pb2.ObjectTypeDescription] = {}
    files: dict[str, Any] = {}
    newest = 0
    for response in sorted(responses, key=lambda r: r.described_unix_ms):
        for description in response.types:
            previous = types.get(description.name)
            if previous is not None and previous != description:
                log.info(
                    "nodes describe a type differently: the newest wins", type=description.name
                )
            types[description.name] = description
        for file in response.files.file:
            files[file.name] = file
        newest = max(newest, response.described_unix_ms)
    merged = describe_pb2.DescribeResponse(described_unix_ms=newest)
    merged.types.extend(types[name] for name in sorted(types))
    merged.files.file.extend(ordered_files(files.values()))
    return merged


class Catalog:
    """The union of the descriptions of the nodes of `view`, refreshed as the module says.

    :meth:`run` is the long-lived refresh loop (the gate's supervisor runs it as
    :data:`TASK_NAME`); every other method may be called at any time from the gate's loop.
    Lookups raise as a call would answer (``docs/errors.md``): NOT_FOUND for an unknown
    object type, UNIMPLEMENTED for an unknown method, INVALID_ARGUMENT for a malformed method
    name and for JSON that is not a valid message of the expected type. Every type and method
    a refresh finds is added to `names`, the gate's metric labels.
    """

    def __init__(
        self,
        view: ClusterView,
        pool: ChannelPool,
        *,
        refresh_interval: timedelta,
        node_timeout: float = NODE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
        names: KnownNames | None = None,
    ) -> None:
        self._view = view
        self._names = names
        self._pool = pool
        self._interval = refresh_interval.total_seconds()
        self._node_timeout = node_timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._generation = 0
        """Refreshes completed: a caller that waited for the lock skips its own when it grew."""
        self._refreshed_at = -float("inf")
        self._by_node: dict[str, tuple[str, describe_pb2.DescribeResponse]] = {}
        self._descriptions = Descriptions(describe_pb2.DescribeResponse())

    @property
    def descriptions(self) -> Descriptions:
        """The union as last refreshed (empty before the first refresh)."""
        return self._descriptions

    @property
    def nodes(self) -> Mapping[str, str]:
        """Node id -> address of the nodes whose description is in the union."""
        return {node_id: address for node_id, (address, _) in self._by_node.items()}

    async def describe(self) -> describe_pb2.DescribeResponse:
        """What ``GateService.Describe`` answers: the union, refreshed first if it never was,
        or (at most once per miss interval) if a node of the view is missing from it (it did
        not answer the last refresh: it may have been starting)."""
        if self._generation == 0:
            await self.refresh()
        elif not self._view.nodes().keys() <= self._by_node.keys():
            await self._refresh_after_miss()
        return self._descriptions.response

    async def method(self, object_type: str, method: str) -> MethodTypes:
        """The request and response classes of `object_type`'s `method`."""
        try:
            return self._descriptions.method(object_type, method)
        except (NotFound, Unimplemented):
            if not await self._refresh_after_miss():
                raise
        return self._descriptions.method(object_type, method)

    async def message_class(self, full_name: str) -> type[Message]:
        """The class of the message named `full_name` (a pushed ``Any``'s type); NotFound when
        no node describes it."""
        try:
            return self._descriptions.message_class(full_name)
        except NotFound:
            if not await self._refresh_after_miss():
                raise
        return self._descriptions.message_class(full_name)

    async def push_dict(self, packed: any_pb2.Any) -> dict[str, Any]:
        """A pushed message as ``{"type": …, "message": <protobuf JSON>}`` (``"base64"``
        instead of ``"message"`` when no node describes its type, even after a refresh)."""
        if not self._descriptions.has_message(packed.TypeName()):
            await self._refresh_after_miss()
        return self._descriptions.push_dict(packed)

    def response_dict(self, method: MethodTypes, packed: any_pb2.Any) -> Any:
        """A call's packed response (``CallObjectResponse.response``) as protobuf JSON;
        INTERNAL when it is not of `method`'s response type."""
        return self._descriptions.response_dict(method, packed)

    def request_from_json(self, method: MethodTypes, body: str | bytes) -> Message:
        """`method`'s request parsed from protobuf JSON; INVALID_ARGUMENT when it is not one."""
        return self._descriptions.from_json(method.request, body)

    def to_dict(self, message: Message) -> Any:
        """`message` (a response or a push) as a protobuf JSON value (a dict, but for
        well-known types)."""
        return self._descriptions.to_dict(message)

    def to_json(self, message: Message) -> str:
        """`message` as protobuf JSON text, on one line."""
        return self._descriptions.to_json(message)

    async def refresh(self) -> Descriptions:
        """Asks every node of the view for its description and rebuilds the union. One runs at a
        time: a caller that waited for another's takes its result instead of running its own."""
        generation = self._generation
        async with self._lock:
            if self._generation == generation:
                try:
                    await self._fetch()
                finally:
                    # Also when its caller gave up (an HTTP client gone): a refresh begun
                    # counts against the miss interval, or misses would refresh at will.
                    self._refreshed_at = self._clock()
                self._generation += 1
        return self._descriptions

    async def run(self) -> None:
        """Refreshes at start, on every change of the view and every refresh interval; runs
        until cancelled."""
        while True:
            version = self._view.version
            await self.refresh()
            await asyncio.sleep(MISS_REFRESH_INTERVAL)  # bounds refreshes under view churn
            await first_of([self._view.changed(version)], self._interval - MISS_REFRESH_INTERVAL)

    async def _refresh_after_miss(self) -> bool:
        """Refreshes unless the last refresh is more recent than the miss interval; whether
        it did."""
        if self._clock() - self._refreshed_at < MISS_REFRESH_INTERVAL:
            return False
        await self.refresh()
        return True

    async def _fetch(self) -> None:
        nodes = {node_id: node.address for node_id, node in self._view.nodes().items()}
        answers = await asyncio.gather(
            *(self._describe_node(node_id, address) for node_id, address in nodes.items())
        )
        by_node: dict[str, tuple[str, describe_pb2.DescribeResponse]] = {}
        for (node_id, address), answer in zip(nodes.items(), answers, strict=True):
            if answer is not None:
                by_node[node_id] = (address, answer)
            elif (kept := self._by_node.get(node_id)) is not None and kept[0] == address:
                by_node[node_id] = kept  # not answering now: keep what it said last
        merged = union([response for _, response in by_node.values()])
        if self._names is not None:  # the metrics' labels need no files that build
            self._names.add({t.name: [m.name for m in t.methods] for t in merged.types})
        try:
            descriptions = Descriptions(merged)
        except GoverseError as error:
            log.warning("node descriptions do not build together: kept the last", error=str(error))
            return
        self._by_node = by_node
        self._descriptions = descriptions

    async def _describe_node(
        self, node_id: str, address: str
    ) -> describe_pb2.DescribeResponse | None:
        """The node's description, or None when it does not answer in time (logged)."""
        stub = node_pb2_grpc.NodeServiceStub(self._pool.get(address))
        try:
            response: describe_pb2.DescribeResponse = await stub.Describe(
                describe_pb2.DescribeRequest(), timeout=self._node_timeout, wait_for_ready=True
            )
        except grpc.aio.AioRpcError as error:
            log.info(
                "node did not describe its object types",
                node=node_id,
                code=error.code().name,
                details=error.details(),
            )
            return None
        return response


__all__ = ["MISS_REFRESH_INTERVAL", "NODE_TIMEOUT", "TASK_NAME", "Catalog", "union"]
