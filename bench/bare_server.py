"""The baseline: a bare grpc.aio server doing the benchmarks' work without gate or node.

``python -m bench.bare_server --listen 127.0.0.1:PORT [--loop asyncio|uvloop]``

It serves ``goverse.bench.Bare`` with the goverse wire messages, so the baseline moves the same
bytes as the system:

* ``Echo`` (unary ``CallObjectRequest`` -> ``CallObjectResponse``) answers with the request's
  ``Any``, like a gate relaying a call to a trivial object;
* ``Push`` (``StringValue`` parameters -> stream of ``RegisterResponse``) streams N stamped
  messages, one per stream message, as fast as flow control lets it (or ``rate`` a second);
* ``Hold`` (``RegisterRequest`` -> stream of ``RegisterResponse``) answers ``registered``, then
  holds the stream idle until ``Fanout`` sends something or the server stops;
* ``Fanout`` (``StringValue`` parameters -> ``Int64Value``) queues one stamped message for every
  held stream.

On SIGTERM or SIGINT it ends every held stream (status OK), stops the server with at most 1 s
of grace and exits 0, which is the floor of the gate's drain-then-exit.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from bench import wire
from bench.launch import LOOPS
from bench.serving import serve_until_signalled
from goverse.transport import server_options
from goverse.v1 import gate_pb2

SERVICE = "goverse.bench.Bare"
MAX_PUSH = 10_000_000


class Bare:
    """The handlers and the held streams."""

    def __init__(self) -> None:
        self.holds: dict[int, asyncio.Queue[gate_pb2.RegisterResponse | None]] = {}
        self._next = 0
        self.stopping = False

    async def echo(
        self, request: gate_pb2.CallObjectRequest, context: Any
    ) -> gate_pb2.CallObjectResponse:
        return gate_pb2.CallObjectResponse(response=request.request)

    async def push(
        self, request: StringValue, context: Any
    ) -> AsyncIterator[gate_pb2.RegisterResponse]:
        args = wire.read_params(request)
        count = min(int(args.get("count", 1000)), MAX_PUSH)
        payload = int(args.get("payload", 64))
        rate = float(args.get("rate", 0.0))
        interval = 1 / rate if rate > 0 else 0.0
        loop = asyncio.get_running_loop()
        due = loop.time()
        for seq in range(count):
            yield gate_pb2.RegisterResponse(
                messages=gate_pb2.PushedMessages(messages=[wire.packed_stamp(seq, payload)])
            )
            if interval:
                due += interval
                await asyncio.sleep(max(due - loop.time(), 0.0))

    async def hold(
        self, request: gate_pb2.RegisterRequest, context: Any
    ) -> AsyncIterator[gate_pb2.RegisterResponse]:
        if self.stopping:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stopping")
        key = self._next
        self._next += 1
        queue: asyncio.Queue[gate_pb2.RegisterResponse | None] = asyncio.Queue()
        self.holds[key] = queue
        try:
            yield gate_pb2.RegisterResponse(
                registered=gate_pb2.Registered(
                    client_id=f"bare/{secrets.token_hex(8)}",
                    credential=secrets.token_urlsafe(32),
                    gate_id="bare",
                )
            )
            while (item := await queue.get()) is not None:
                yield item
        finally:
            del self.holds[key]

    async def fanout(self, request: StringValue, context: Any) -> Int64Value:
        args = wire.read_params(request)
        message = gate_pb2.RegisterResponse(
            messages=gate_pb2.PushedMessages(
                messages=[wire.packed_stamp(int(args.get("seq", 0)), int(args.get("payload", 64)))]
            )
        )
        for queue in self.holds.values():
            queue.put_nowait(message)
        return Int64Value(value=len(self.holds))

    def end_holds(self) -> int:
        self.stopping = True
        for queue in self.holds.values():
            queue.put_nowait(None)
        return len(self.holds)

    def handler(self) -> Any:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Echo": grpc.unary_unary_rpc_method_handler(
                    self.echo,
                    request_deserializer=gate_pb2.CallObjectRequest.FromString,
                    response_serializer=gate_pb2.CallObjectResponse.SerializeToString,
                ),
                "Push": grpc.unary_stream_rpc_method_handler(
                    self.push,
                    request_deserializer=StringValue.FromString,
                    response_serializer=gate_pb2.RegisterResponse.SerializeToString,
                ),
                "Hold": grpc.unary_stream_rpc_method_handler(
                    self.hold,
                    request_deserializer=gate_pb2.RegisterRequest.FromString,
                    response_serializer=gate_pb2.RegisterResponse.SerializeToString,
                ),
                "Fanout": grpc.unary_unary_rpc_method_handler(
                    self.fanout,
                    request_deserializer=StringValue.FromString,
                    response_serializer=Int64Value.SerializeToString,
                ),
            },
        )


async def serve(listen: str, ready_file: Path | None) -> int:
    bare = Bare()
    server = grpc.aio.server(options=server_options())
    server.add_generic_rpc_handlers((bare.handler(),))
    if not await serve_until_signalled(server, "bare", listen, ready_file):
        return 1
    ended = bare.end_holds()
    await server.stop(grace=1.0)
    print(f"bare server stopped; {ended} held streams ended", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server", description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port; port 0 picks a free one")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio")
    parser.add_argument("--ready-file", type=Path, help="where to write the bound address")
    args = parser.parse_args(argv)
    if args.loop == "uvloop":
        import uvloop

        return int(uvloop.run(serve(args.listen, args.ready_file)))
    return asyncio.run(serve(args.listen, args.ready_file))


if __name__ == "__main__":
    sys.exit(main())
