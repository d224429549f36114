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
import functools
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
    message per write (:meth:`run`, the task of whoever owns the stream). What it queues is
    bounded by the calls in flight, which its callers bound."""

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


Reply = Callable[[bytes | ConnectionError], None]
"""What gets a call's reply: its payload, or the error that ended the stream first."""


class StreamCaller:
    """Calls over one stream of `channel`, matched by call id: :meth:`send` hands a reply to a
    callback, :meth:`call` awaits it (use it as an async context manager, which owns the
    stream's writer and reader tasks). When the stream ends, every call still waiting gets a
    ConnectionError and `on_end` runs. Waiting calls are bounded by their callers: the
    closed-loop workers of the bench, or the relay's clients."""

    def __init__(self, channel: Any, on_end: Callable[[], None] | None = None) -> None:
        self._stream = channel.stream_stream(METHOD)()
        self._writer = FrameWriter(self._stream.write)
        self._waiting: dict[int, Reply] = {}
        self._next_id = 0
        self._on_end = on_end
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

    def send(self, payload: bytes, reply: Reply) -> None:
        if self._tasks[1].done():
            raise ConnectionError("the relay's stream ended")
        self._next_id += 1
        self._waiting[self._next_id] = reply
        self._writer.send(self._next_id, payload)

    async def call(self, payload: bytes) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.send(payload, functools.partial(_settle, future))
        return await future

    async def _replies(self) -> None:
        try:
            async for message in self._stream:
                for call_id, payload in frames_of(message):
                    self._waiting.pop(call_id)(payload)
        except asyncio.CancelledError:  # closed by its owner
            raise
        except Exception:  # the stream broke: as if it ended
            pass
        waiting, self._waiting = self._waiting, {}
        for reply in waiting.values():  # nobody waits for ever
            reply(ConnectionError("the relay's stream ended"))
        if self._on_end is not None:
            self._on_end()


def _settle(future: asyncio.Future[bytes], reply: bytes | ConnectionError) -> None:
    if future.done():  # its caller gave up
        return
    if isinstance(reply, ConnectionError):
        future.set_exception(reply)
    else:
        future.set_result(reply)


class Relay:
    """The ``Relay`` handler: echoes each frame back (the end) or forwards it upstream and
    sends the reply back under the caller's call id (the relay)."""

    def __init__(self) -> None:
        self._upstream: StreamCaller | None = None

    @contextlib.asynccontextmanager
    async def upstream(self, target: str) -> AsyncIterator[None]:
        """Forwards to the end at `target` over one stream for the block."""
        async with (
            grpc.aio.insecure_channel(target) as channel,
            StreamCaller(channel, on_end=_stop) as self._upstream,
        ):
            yield

    async def handle(self, requests: AsyncIterator[bytes], context: Any) -> None:
        writer = FrameWriter(context.write)
        async with _running(writer):
            async for message in requests:
                for call_id, payload in frames_of(message):
                    if self._upstream is None:
                        writer.send(call_id, payload)
                    else:
                        self._upstream.send(payload, functools.partial(_back, writer, call_id))


def _back(writer: FrameWriter, call_id: int, reply: bytes | ConnectionError) -> None:
    """Sends the end's reply back to the relay's client (an error: the relay is stopping)."""
    if not isinstance(reply, ConnectionError):
        writer.send(call_id, reply)


def _stop() -> None:
    """Without its end the relay cannot answer: it stops as on SIGTERM, which ends its
    clients' streams, so their calls fail instead of waiting for ever."""
    signal.raise_signal(signal.SIGTERM)


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
