"""Keepalive: our option keys take effect, and a server permits the ping rate of its clients."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf.wrappers_pb2 import BytesValue

from goverse.transport import Keepalive, channel_options, server_options
from tests.helpers.processes import ROOT
from tests.helpers.tasks import bounded

IDLE_SECONDS = 6.0
"""How long the stream stays silent: gRPC pings at most once a second, and the third ping
that comes too early ends the connection, so a forbidden rate shows within about 4 s."""

FAST = Keepalive(
    time=timedelta(seconds=1), timeout=timedelta(seconds=2), min_time=timedelta(milliseconds=500)
)


async def _idle_then_one_message(
    request: BytesValue, context: grpc.aio.ServicerContext
) -> AsyncIterator[BytesValue]:
    await asyncio.sleep(IDLE_SECONDS)
    yield BytesValue(value=b"after the silence")


async def _idle_stream(server_keepalive: Keepalive) -> tuple[str, str, float]:
    """Serves one silent stream under `server_keepalive` to a client pinging every second;
    returns the stream's status code, its details and how long it lasted."""
    server = grpc.aio.server(options=server_options(keepalive=server_keepalive))
    handler = grpc.method_handlers_generic_handler(
        "test.Idle",
        {
            "Stream": grpc.unary_stream_rpc_method_handler(
                _idle_then_one_message,
                request_deserializer=BytesValue.FromString,
                response_serializer=BytesValue.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    started = time.monotonic()
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=channel_options(keepalive=FAST)
        ) as channel:
            call: Any = channel.unary_stream(
                "/test.Idle/Stream",
                request_serializer=BytesValue.SerializeToString,
                response_deserializer=BytesValue.FromString,
            )(BytesValue())
            try:
                messages = [message.value async for message in call]
                assert messages == [b"after the silence"]
                return "OK", "", time.monotonic() - started
            except grpc.aio.AioRpcError as error:
                return error.code().name, error.details() or "", time.monotonic() - started
    finally:
        await server.stop(0)


async def test_a_silent_stream_pinged_every_second_is_not_cut_when_the_server_permits_it() -> None:
    """A client pinging every second a server that permits pings every 0.5 s keeps its silent
    stream for 6 s; the same client against a server that permits one ping every 5 s (our
    default) gets GOAWAY too_many_pings. The second half proves the pings are really sent and
    that the server option's key is the one gRPC reads."""
    permitted, forbidden = await asyncio.gather(
        _idle_stream(FAST),
        _idle_stream(Keepalive(min_time=timedelta(seconds=5))),
    )
    assert permitted[0] == "OK", permitted
    assert permitted[2] >= IDLE_SECONDS
    code, details, lasted = forbidden
    assert code == "UNAVAILABLE", forbidden
    assert "too many pings" in details.lower(), forbidden
    assert lasted < IDLE_SECONDS


def test_option_keys_are_the_ones_grpc_reads() -> None:
    """The keys DESIGN.md §3 names (a misspelt key is silently ignored), with our values."""
    server = dict(server_options(keepalive=Keepalive()))
    assert server["grpc.http2.min_ping_interval_without_data_ms"] == 5_000
    assert server["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_time_ms"] == 60_000  # gRPC servers ping once a minute at most
    assert server["grpc.keepalive_timeout_ms"] == 5_000
    channel = dict(channel_options(keepalive=Keepalive()))
    assert channel["grpc.keepalive_time_ms"] == 10_000
    assert channel["grpc.keepalive_timeout_ms"] == 5_000
    assert channel["grpc.keepalive_permit_without_calls"] == 1
    assert channel["grpc.http2.max_pings_without_data"] == 0
    assert Keepalive().detection_bound == timedelta(seconds=15)


_FROZEN_SERVER = """
import asyncio, sys
import grpc
from google.protobuf.wrappers_pb2 import BytesValue
from goverse.transport import Keepalive, server_options

async def stream(request, context):
    yield BytesValue(value=b"hello")
    await asyncio.sleep(3600)

async def main():
    server = grpc.aio.server(options=server_options(keepalive=Keepalive(min_time=__MIN__)))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Idle", {
        "Stream": grpc.unary_stream_rpc_method_handler(
            stream, request_deserializer=BytesValue.FromString,
            response_serializer=BytesValue.SerializeToString)}),))
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    await server.start()
    await server.wait_for_termination()

asyncio.run(main())
""".replace("__MIN__", "__import__('datetime').timedelta(milliseconds=500)")


async def test_a_frozen_server_is_noticed_within_keepalive_time_plus_timeout() -> None:
    """SIGSTOP the server of an open, silent stream: its socket stays open and nothing
    answers. The client's keepalive (1 s, timeout 1 s) ends the stream with UNAVAILABLE
    within about 2 s; gRPC would wait a minute if the ping timeout were not set too."""
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _FROZEN_SERVER, stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert server.stdout is not None
        port = int(await bounded(server.stdout.readline(), 30))
        keepalive = Keepalive(time=timedelta(seconds=1), timeout=timedelta(seconds=1))
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=channel_options(keepalive=keepalive)
        ) as channel:
            call: Any = channel.unary_stream(
                "/test.Idle/Stream",
                request_serializer=BytesValue.SerializeToString,
                response_deserializer=BytesValue.FromString,
            )(BytesValue())
            assert (await call.read()).value == b"hello"
            server.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    await bounded(call.read(), 15)
            finally:
                server.send_signal(signal.SIGCONT)
            noticed = time.monotonic() - stopped
        print(f"\na frozen server was noticed after {noticed:.2f}s ({ended.value.details()})")
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert noticed < keepalive.detection_bound.total_seconds() + 3
    finally:
        server.kill()
        await server.wait()
