"""gRPC server of a service: a grpc.aio server with health, traced and intercepted."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from goverse.server._decoding import DecodeGuard
from goverse.server._tracing import server_interceptors
from goverse.transport import (
    DEFAULT_KEEPALIVE,
    DEFAULT_MAX_MESSAGE_BYTES,
    Keepalive,
    server_options,
)

log = structlog.get_logger(__name__)


HEALTH_MAX_BYTES = 16 * 1024
"""Largest message the plaintext health port takes or sends."""


class ListenError(RuntimeError):
    """The server could not bind its listen address."""


class GrpcHost:
    """A grpc.aio server with the ``grpc.health.v1`` service, for the overall server ("") and
    for each named service. A request that does not decode is refused first (INVALID_ARGUMENT,
    :class:`DecodeGuard`); calls are traced (health checks excepted), then pass through
    `interceptors` (for example call metrics).

    With `credentials` the listen address takes TLS only. With `health_port`, a second,
    plaintext server on that port (same host) serves the same health statuses and nothing
    else: Kubernetes' gRPC probes present no client certificate and speak no TLS.
    """

    def __init__(
        self,
        listen: str,
        service_names: Sequence[str],
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        keepalive: Keepalive = DEFAULT_KEEPALIVE,
        credentials: grpc.ServerCredentials | None = None,
        health_port: int | None = None,
    ) -> None:
        self._listen = listen
        self._credentials = credentials
        self._health_port = health_port
        self._service_names = ("", *service_names)
        self.server = grpc.aio.server(
            options=server_options(max_message_bytes, keepalive),
            interceptors=[DecodeGuard(), *server_interceptors(), *interceptors],
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.health_server: grpc.aio.Server | None = None
        if health_port is not None:
            # Health messages are a few bytes: a small limit keeps the unauthenticated port cheap.
            self.health_server = grpc.aio.server(
                options=server_options(HEALTH_MAX_BYTES, keepalive), interceptors=[DecodeGuard()]
            )
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
        self.port = 0
        self.bound_health_port: int | None = None
        """The bound health port (None without --health-port), known once bound."""

    def bind(self) -> int:
        """Binds the listen address; returns the bound TCP port (0 for a ``unix:`` socket).

        Port 0 picks a free port. Raises :class:`ListenError` when the address cannot be bound.
        """
        port = _add_port(self.server, self._listen, self._credentials)
        # grpc answers 1 for a unix socket: it has no port.
        self.port = 0 if self._listen.startswith("unix:") else port
        if self.health_server is not None and self._health_port is not None:
            host = (
                "0.0.0.0" if self._listen.startswith("unix:") else self._listen.rpartition(":")[0]
            )
            address = f"{host}:{self._health_port}"
            self.bound_health_port = _add_port(self.health_server, address, None)
        return self.port

    async def serve(self, ready: bool = True) -> None:
        """Starts serving what was added to :attr:`server`, then reports SERVING for the
        overall server (``""``, liveness) and, when `ready`, for each named service (else
        NOT_SERVING until :meth:`set_ready`)."""
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.set_ready(ready)

    async def set_ready(self, ready: bool) -> None:
        """Reports each named service SERVING or NOT_SERVING (readiness); the overall status
        stays as it is. Does nothing once :meth:`enter_shutdown` was called."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._service_names[1:]:
            await self.health.set(name, status)

    async def start(self) -> int:
        """Binds and serves (:meth:`bind`, then :meth:`serve`); returns the bound port."""
        port = self.bind()
        await self.serve()
        return port

    async def enter_shutdown(self) -> None:
        """Reports NOT_SERVING for every service name, permanently."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace: float) -> None:
        """Stops the server; in-flight unary calls get up to `grace` seconds to finish."""
        await self.server.stop(grace)
        if self.health_server is not None:
            await self.health_server.stop(0)


def _add_port(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> int:
    try:
        if credentials is None:
            port: int = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise ListenError(f"cannot listen on {address}: {error}") from error
    if port == 0:
        raise ListenError(f"cannot listen on {address} (address in use?)")
    return port
