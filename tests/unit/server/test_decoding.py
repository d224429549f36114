"""DecodeGuard in process: an undecodable request of a stream ends the whole RPC."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
from google.protobuf.wrappers_pb2 import Int64Value

from goverse.server._decoding import _guard

WAIT = 5.0
"""Longest a test waits for what it expects (a loaded 2-core machine included)."""
METHOD = "/test.Service/Stream"


class FakeContext:
    """The part of a servicer context the guard uses: `aborted` is the status sent."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError()


async def test_garbage_read_by_the_handlers_own_reader_task_ends_the_rpcs_task() -> None:
    """A stream handler that reads its requests in a task of its own (as both call streams
    do) and waits on something else meanwhile: the undecodable second request sends
    INVALID_ARGUMENT, and the task the RPC runs in is cancelled, so the handler ends and can
    cancel what it started. The guard used to cancel the task that read the garbage (the
    handler's reader) instead, which left the handler, and every call it had started,
    running."""
    reader_saw: list[Any] = []
    handler_ended = asyncio.Event()

    async def handler(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Int64Value]:
        async def read() -> None:
            async for request in requests:
                reader_saw.append(request)

        reader = asyncio.get_running_loop().create_task(read())
        try:
            await asyncio.Event().wait()  # the replies of calls that never come
            yield Int64Value()
        finally:
            reader.cancel()
            handler_ended.set()

    plain = grpc.stream_stream_rpc_method_handler(
        handler, Int64Value.FromString, Int64Value.SerializeToString
    )
    guarded = _guard(METHOD, plain)
    decode = guarded.request_deserializer
    assert decode is not None

    async def requests() -> AsyncIterator[Any]:
        yield decode(Int64Value(value=1).SerializeToString())
        yield decode(b"\xff\xff\xff\xff\xff")
        await asyncio.Event().wait()  # the peer sends nothing more

    context = FakeContext()

    async def rpc() -> None:
        async for _ in guarded.stream_stream(requests(), cast(Any, context)):
            pass

    rpc_task = asyncio.get_running_loop().create_task(rpc())
    done, _ = await asyncio.wait([rpc_task], timeout=WAIT)
    assert done == {rpc_task}, "the RPC's task is still running"
    assert rpc_task.cancelled()
    assert handler_ended.is_set()
    assert reader_saw == [Int64Value(value=1)]
    assert context.aborted is not None
    assert context.aborted[0] is grpc.StatusCode.INVALID_ARGUMENT
