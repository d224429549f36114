"""GateService: the gRPC face of the gate — client registration streams and verified calls."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import structlog

from goverse.errors import GoverseError, Unavailable, translate_errors
from goverse.gate._client_proxy import ClientProxy
from goverse.gate._clients import ClientRegistry
from goverse.gate._router import Router
from goverse.runtime import Supervisor, SupervisorClosed
from goverse.v1 import gate_pb2, gate_pb2_grpc

log = structlog.get_logger(__name__)

CLIENT_ID_METADATA = "goverse-client-id"
CREDENTIAL_METADATA = "goverse-credential"
STREAM_TASK_PREFIX = "client:"


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if key in (CLIENT_ID_METADATA, CREDENTIAL_METADATA) and isinstance(value, str):
            values.setdefault(key, value)
    return values


class GateService(gate_pb2_grpc.GateServiceServicer):
    """Register streams and the three unary calls a client makes.

    Each Register stream owns one :class:`ClientProxy` from start to end and runs in its own
    RPC task, adopted by the supervisor as ``client:<client-id>``; it ends when the proxy is
    closed (by a draining shutdown, after flushing and sending ``Draining``) or when the client
    goes away. Unary calls are verified against the registry before anything is routed.
    """

    def __init__(
        self, gate_id: str, registry: ClientRegistry, router: Router, supervisor: Supervisor
    ) -> None:
        self._gate_id = gate_id
        self._registry = registry
        self._router = router
        self._supervisor = supervisor

    async def Register(
        self, request: gate_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gate_pb2.RegisterResponse]:
        try:
            if self._supervisor.closing:
                raise SupervisorClosed("shutting down")
            proxy = self._registry.register()
        except SupervisorClosed:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"gate {self._gate_id} is shutting down; connect to another gate",
            )
            return
        except GoverseError as error:
            await context.abort(error.status_code, error.message)
            return
        # Each RPC runs in its own task and context: what is bound here stays with this stream.
        structlog.contextvars.bind_contextvars(client_id=proxy.client_id)
        try:
            with self._supervisor.adopt(STREAM_TASK_PREFIX + proxy.client_id):
                log.info("client registered", clients=len(self._registry))
                yield gate_pb2.RegisterResponse(
                    registered=gate_pb2.Registered(
                        client_id=proxy.client_id,
                        credential=proxy.credential,
                        gate_id=self._gate_id,
                    )
                )
                # One stream message per batch; the loop ends when the proxy is closed.
                while (batch := await proxy.next_batch()) is not None:
                    yield gate_pb2.RegisterResponse(
                        messages=gate_pb2.PushedMessages(messages=batch)
                    )
                if proxy.draining:
                    yield gate_pb2.RegisterResponse(
                        draining=gate_pb2.Draining(reason=proxy.close_reason)
                    )
        except SupervisorClosed:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"gate {self._gate_id} is shutting down; connect to another gate",
            )
        finally:
            # Whichever side ended the stream (cancellation and GeneratorExit pass through).
            reason = proxy.close_reason or "the client went away"
            proxy.close(reason)
            self._registry.remove(proxy)
            log.info(
                "client stream ended", reason=reason, pushed=proxy.pushed, dropped=proxy.dropped
            )

    def _authenticate(self, context: grpc.aio.ServicerContext) -> ClientProxy:
        if self._registry.draining:
            raise Unavailable(f"gate {self._gate_id} is shutting down; connect to another gate")
        metadata = _metadata(context)
        proxy = self._registry.authenticate(
            metadata.get(CLIENT_ID_METADATA), metadata.get(CREDENTIAL_METADATA)
        )
        structlog.contextvars.bind_contextvars(client_id=proxy.client_id)
        return proxy

    @translate_errors
    async def CallObject(
        self, request: gate_pb2.CallObjectRequest, context: grpc.aio.ServicerContext
    ) -> gate_pb2.CallObjectResponse:
        proxy = self._authenticate(context)
        structlog.contextvars.bind_contextvars(
            object_type=request.object_type, object_id=request.object_id[:256]
        )
        return await self._router.call_object(proxy.client_id, request, context.time_remaining())

    @translate_errors
    async def CreateObject(
        self, request: gate_pb2.CreateObjectRequest, context: grpc.aio.ServicerContext
    ) -> gate_pb2.CreateObjectResponse:
        proxy = self._authenticate(context)
        structlog.contextvars.bind_contextvars(
            object_type=request.object_type, object_id=request.object_id[:256]
        )
        return await self._router.create_object(proxy.client_id, request, context.time_remaining())

    @translate_errors
    async def DeleteObject(
        self, request: gate_pb2.DeleteObjectRequest, context: grpc.aio.ServicerContext
    ) -> gate_pb2.DeleteObjectResponse:
        proxy = self._authenticate(context)
        structlog.contextvars.bind_contextvars(
            object_type=request.object_type, object_id=request.object_id[:256]
        )
        return await self._router.delete_object(proxy.client_id, request, context.time_remaining())
