"""The transport's ceiling: a relay over gRPC bidirectional streams doing no work per call.

``python -m bench.grpc_relay --listen 127.0.0.1:0 [--upstream HOST:PORT] [--ready-file F]``

Scenario 11 measures the best a call relayed over grpc.aio streams can do in Python, which
no work per call in gate or node can beat: a client sends frames (an 8-byte call id, a 4-byte
length, the payload) over one bidirectional stream to a relay process, which forwards each
over its one stream to an end process (``--upstream``); the end echoes each frame back the
same way. Frames that are ready together travel as one stream message on every hop, as
goverse's ``Session`` and ``Calls`` streams batch them. There is no protobuf, routing, object
turn, span or metric per call. Without ``--upstream`` the process is the echoing end.

Scenario 11 starts both with the services' grpc environment (``GRPC_EXPERIMENTS`` as
:mod:`goverse.grpc_environment` sets it for gate and node), so they use the poller gate and
node use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from bench.serving import serve_until_signalled
from goverse.transport import server_options

SERVICE = "goverse.bench.Ceiling"
METHOD = f"/{SERVICE}/Relay"
FRAME = struct.Struct("<QI")
"""A frame's header: the call id and the payload's length."""

Frame = tuple[int, bytes]


def frames_of(message: bytes) -> Iterator[Frame]:
    """The frames of one stream message."""
    offset, end = 0, len(message)
    while offset < end:
        call_id, length = FRAME.unpack_from(message, offset)
        offset += FRAME.size
        yield call_id, message[offset : offset + length]
        offset += length


def message_of(frames: Sequence[Frame]) -> bytes:
    """One stream message carrying `frames`."""
    return b"".join(FRAME.pack(call_id, len(payload)) + payload for call_id, payload in frames)


class FrameWriter:
    """Sends the frames queued with :meth:`send` over one stream, all that are ready as one
    message per write (:meth:`run`, the task of whoever owns the stream)."""

    def __init__(self, write: Callable[[bytes], Awaitable[Any]]) -> None:
        self._write = write
        self._pending: list[Frame] = []
        self._ready = asyncio.Event()

    def send(self, call_id: int, payload: bytes) -> None:
        self._pending.append((call_id, payload))
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            batch, self._pending = self._pending, []
            await self._write(message_of(batch))


@contextlib.asynccontextmanager
async def _running(writer: FrameWriter) -> AsyncIterator[None]:
    """Runs `writer` for the block; cancels and awaits it after."""
    task = asyncio.create_task(writer.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # a cancel of ours still raises


class Relay:
    """The ``Relay`` handler: echoes each frame back (the end) or forwards it upstream and
    sends the reply back under the caller's call id (the relay)."""

    def __init__(self) -> None:
        self._upstream: FrameWriter | None = None
        self._waiting: dict[int, tuple[FrameWriter, int]] = {}
        self._next_id = 0

    @contextlib.asynccontextmanager
    async def upstream(self, target: str) -> AsyncIterator[None]:
        """Opens the one stream to the end for the block, with its writer and reader."""
        async with grpc.aio.insecure_channel(target) as channel:
            stream = channel.stream_stream(METHOD)()
            self._upstream = FrameWriter(stream.write)
            async with _running(self._upstream):
                reader = asyncio.create_task(self._replies(stream))
                try:
                    yield
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)

    async def _replies(self, stream: Any) -> None:
        try:
            async for message in stream:
                for call_id, payload in frames_of(message):
                    writer, caller_id = self._waiting.pop(call_id)
                    writer.send(caller_id, payload)
        except asyncio.CancelledError:  # the relay is stopping
            raise
        except Exception:  # the stream to the end broke: as if it ended
            pass
        # Without its end the relay cannot answer: it stops as on SIGTERM, which ends its
        # clients' streams, so their calls fail instead of waiting for ever.
        signal.raise_signal(signal.SIGTERM)

    async def handle(self, requests: AsyncIterator[bytes], context: Any) -> None:
        writer = FrameWriter(context.write)
        async with _running(writer):
            async for message in requests:
                for call_id, payload in frames_of(message):
                    self._forward(writer, call_id, payload)

    def _forward(self, writer: FrameWriter, call_id: int, payload: bytes) -> None:
        if self._upstream is None:
            writer.send(call_id, payload)
            return
        self._next_id += 1
        self._waiting[self._next_id] = (writer, call_id)
        self._upstream.send(self._next_id, payload)


class StreamCaller:
    """The client side: calls over one stream to `target`, matched by call id (use it as an
    async context manager; :meth:`call` inside)."""

    def __init__(self, channel: Any) -> None:
        self._stream = channel.stream_stream(METHOD)()
        self._writer = FrameWriter(self._stream.write)
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._next_id = 0
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> StreamCaller:
        self._tasks = [
            asyncio.create_task(self._writer.run()),
            asyncio.create_task(self._replies()),
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stream.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for waiting in self._waiting.values():
            waiting.cancel()

    async def call(self, payload: bytes) -> bytes:
        if self._tasks[1].done():
            raise ConnectionError("the relay's stream ended")
        self._next_id += 1
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[self._next_id] = reply
        self._writer.send(self._next_id, payload)
        return await reply

    async def _replies(self) -> None:
        try:
            async for message in self._stream:
                for call_id, payload in frames_of(message):
                    self._waiting.pop(call_id).set_result(payload)
        finally:  # the stream ended: nobody waits for ever
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(ConnectionError("the relay's stream ended"))


async def serve(listen: str, upstream: str | None, ready_file: Path | None) -> int:
    relay = Relay()
    server = grpc.aio.server(options=server_options())
    handler = grpc.stream_stream_rpc_method_handler(relay.handle)  # raw bytes both ways
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"Relay": handler}),)
    )
    name = "relay" if upstream else "end"
    async with contextlib.AsyncExitStack() as stack:
        if upstream:
            await stack.enter_async_context(relay.upstream(upstream))
        if not await serve_until_signalled(server, name, listen, ready_file):
            return 1
        await server.stop(grace=1.0)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_relay", description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port; port 0 picks a free one")
    parser.add_argument("--upstream", help="the end's host:port: relay to it (else: echo)")
    parser.add_argument("--ready-file", type=Path, help="where to write the bound address")
    args = parser.parse_args(argv)
    return asyncio.run(serve(args.listen, args.upstream, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
