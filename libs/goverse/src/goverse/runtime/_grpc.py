"""gRPC plumbing shared by gate and node: options, a channel pool, and a server with health."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

log = structlog.get_logger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


def server_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Options for our servers: message size limits and a ping policy our clients respect."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Clients ping idle long-lived streams every 10 s; permit that without GOAWAY.
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.so_reuseport", 0),
    ]


def channel_options(max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> list[tuple[str, Any]]:
    """Options for our channels: size limits and keepalive pings on idle long-lived streams."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect to a restarted peer quickly instead of waiting out a long backoff.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


class ChannelPool:
    """One long-lived insecure channel per address, created on first use."""

    def __init__(self, options: Sequence[tuple[str, Any]]) -> None:
        self._options = list(options)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        """Closes every channel; RPCs still on them end with CANCELLED."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


class ListenError(RuntimeError):
    """The server could not bind its listen address."""


class GrpcHost:
    """A grpc.aio server with the ``grpc.health.v1`` service, for the overall server ("") and
    for each named service."""

    def __init__(
        self,
        listen: str,
        service_names: Sequence[str],
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self._listen = listen
        self._service_names = ("", *service_names)
        self.server = grpc.aio.server(options=server_options(max_message_bytes))
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0

    async def start(self) -> int:
        """Binds, starts serving, reports SERVING; returns the bound port."""
        try:
            self.port = self.server.add_insecure_port(self._listen)
        except RuntimeError as error:
            raise ListenError(f"cannot listen on {self._listen}: {error}") from error
        if self.port == 0:
            raise ListenError(f"cannot listen on {self._listen} (address in use?)")
        await self.server.start()
        for name in self._service_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def enter_shutdown(self) -> None:
        """Reports NOT_SERVING for every service name, permanently."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Stops the server; in-flight unary calls get up to `grace` seconds to finish."""
        await self.server.stop(grace)
