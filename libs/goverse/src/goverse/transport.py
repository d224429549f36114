"""Transport: how goverse processes connect — channel and server options, keepalive, a channel
pool and reconnect backoff. Shared by the client SDK and both services; needs only grpcio."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc

from goverse._tracing import client_interceptors

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Keepalive:
    """HTTP/2 keepalive of our connections, which is what detects a half-open peer.

    A channel pings its connection every `time` (gRPC sends a client ping at most once a
    second) and closes it when a ping is unanswered for `timeout`: a peer that stopped
    (SIGSTOP, a frozen VM, a silent network) is noticed within ``time + timeout`` even on a
    stream that carries nothing. A server accepts client pings as often as every `min_time`;
    a client that pings faster is cut off with GOAWAY ``too_many_pings``, so every client's
    `time` must be at least the servers' `min_time`. A server also pings its clients, but
    gRPC servers ping at most once a minute, whatever `time` says.
    """

    time: timedelta = timedelta(seconds=10)
    """Interval between keepalive pings on a connection."""

    timeout: timedelta = timedelta(seconds=5)
    """How long a ping may stay unanswered before the connection is closed."""

    min_time: timedelta = timedelta(seconds=5)
    """Shortest interval between client pings a server accepts."""

    def __post_init__(self) -> None:
        for name in ("time", "timeout", "min_time"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"--keepalive-{name.replace('_', '-')} must be positive")

    @property
    def detection_bound(self) -> timedelta:
        """Longest time a channel takes to notice a peer that stopped answering."""
        return max(self.time, MIN_CLIENT_PING_INTERVAL) + self.timeout


DEFAULT_KEEPALIVE = Keepalive()
MIN_CLIENT_PING_INTERVAL = timedelta(seconds=1)
"""gRPC core sends a client keepalive ping at most this often."""
MIN_SERVER_PING_INTERVAL = timedelta(minutes=1)
"""gRPC core sends a server keepalive ping at most this often."""


MAX_OPTION_MS = 2**31 - 1
"""The longest duration a gRPC channel or server option takes, in milliseconds (a C int: 24.8
days); a longer keepalive setting means as good as never, and is given as this."""


def _ms(duration: timedelta) -> int:
    return min(max(int(duration.total_seconds() * 1000), 1), MAX_OPTION_MS)


def server_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, keepalive: Keepalive = DEFAULT_KEEPALIVE
) -> list[tuple[str, Any]]:
    """Options for our servers: message size limits and a ping policy our clients respect.

    The keys are gRPC core's; a misspelt key is silently ignored, so tests hold them to their
    effect (an idle stream under frequent pings gets no GOAWAY; a frozen peer is noticed).
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # Accept client pings every `min_time`, also on connections without calls; faster
        # pings count as strikes and the third strike ends the connection (too_many_pings).
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(keepalive.min_time)),
        ("grpc.keepalive_permit_without_calls", 1),
        # Ping clients too (gRPC throttles server pings to one a minute), so a client that
        # vanished without closing its connection is forgotten.
        ("grpc.keepalive_time_ms", _ms(max(keepalive.time, MIN_SERVER_PING_INTERVAL))),
        ("grpc.keepalive_timeout_ms", _ms(keepalive.timeout)),
        ("grpc.http2.ping_timeout_ms", _ms(keepalive.timeout)),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.so_reuseport", 0),
    ]


def channel_options(
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, keepalive: Keepalive = DEFAULT_KEEPALIVE
) -> list[tuple[str, Any]]:
    """Options for our channels: size limits and keepalive pings on idle long-lived streams."""
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", _ms(keepalive.time)),
        ("grpc.keepalive_timeout_ms", _ms(keepalive.timeout)),
        # gRPC core times a ping out after the first timeout registered for it, and its own
        # ping timeout (one minute) comes first: without this key, keepalive_timeout_ms has
        # no effect and a frozen peer is noticed after a minute.
        ("grpc.http2.ping_timeout_ms", _ms(keepalive.timeout)),
        ("grpc.keepalive_permit_without_calls", 1),
        # A server stream's client sends no data after its request: without this, the
        # client would stop pinging after two pings and never notice a dead server.
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect to a restarted peer quickly instead of waiting out a long backoff.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]


UNIX_TLS_NAME = "localhost"
"""The name a TLS peer on a unix socket is verified as: the socket has no host name of its
own (grpc would check its path), and the peer is on this machine."""


def tls_name_options(address: str) -> list[tuple[str, Any]]:
    """Channel options for a TLS channel to `address`: a unix socket is verified as
    :data:`UNIX_TLS_NAME`; a TCP address by its host, as grpc does by itself."""
    if address.startswith("unix:"):
        return [("grpc.ssl_target_name_override", UNIX_TLS_NAME)]
    return []


class ChannelPool:
    """One long-lived channel per address, created on first use: insecure, or secured by
    `credentials` (TLS, mutual when they carry a client certificate).

    Channels carry the call-tracing interceptors (a client span per call and the W3C context
    in its metadata; no-ops until an OpenTelemetry SDK is installed) unless `interceptors`
    says otherwise.
    """

    def __init__(
        self,
        options: Sequence[tuple[str, Any]],
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._options = list(options)
        self._interceptors = client_interceptors() if interceptors is None else list(interceptors)
        self._credentials = credentials
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._retired: list[grpc.aio.Channel] = []

    def get(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            interceptors = self._interceptors or None
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(
                    address, options=self._options, interceptors=interceptors
                )
            else:
                channel = grpc.aio.secure_channel(
                    address,
                    self._credentials,
                    options=[*self._options, *tls_name_options(address)],
                    interceptors=interceptors,
                )
            self._channels[address] = channel
        return channel

    def addresses(self) -> list[str]:
        """The addresses that have a channel now."""
        return list(self._channels)

    async def discard(self, address: str) -> None:
        """Closes the channel of `address`, if there is one (RPCs still on it end with
        CANCELLED); a later :meth:`get` makes a new one."""
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def rotate(self, credentials: grpc.ChannelCredentials) -> None:
        """Makes later :meth:`get` calls create channels with `credentials` (a rotated client
        certificate: a channel's credentials are fixed when it is made).

        The current channels are retired, not closed: calls and streams on them go on (a
        handshake is not repeated on an open connection) until their owners next ask for a
        channel. The channels retired by the rotation before are closed now, so at most two
        generations are open.
        """
        older, self._retired = self._retired, list(self._channels.values())
        self._channels = {}
        self._credentials = credentials
        for channel in older:
            await channel.close()

    async def close(self) -> None:
        """Closes every channel; RPCs still on them end with CANCELLED."""
        channels = [*self._channels.values(), *self._retired]
        self._channels, self._retired = {}, []
        for channel in channels:
            await channel.close()


@dataclass
class Backoff:
    """Delays for successive reconnect attempts.

    The n-th delay is uniform in ``[0, min(maximum, initial * 2**n)]`` ("full jitter"), so many
    peers that lost the same server do not retry in step.
    """

    initial: timedelta
    maximum: timedelta
    rng: random.Random = field(default_factory=random.Random)
    _attempt: int = 0

    def __post_init__(self) -> None:
        if self.initial <= timedelta(0):
            raise ValueError("the initial backoff must be positive")
        if self.maximum < self.initial:
            raise ValueError("the maximum backoff must not be below the initial backoff")

    @property
    def attempt(self) -> int:
        return self._attempt

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt."""
        ceiling = self.initial.total_seconds() * (2 ** min(self._attempt, 32))
        ceiling = min(ceiling, self.maximum.total_seconds())
        self._attempt += 1
        return self.rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        self._attempt = 0
