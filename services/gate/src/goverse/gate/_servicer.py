"""GateService: the gRPC face of the gate — client registration streams and verified calls."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import TypeVar

import grpc

from goverse import wire
from goverse.errors import (
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    translate_errors,
)
from goverse.gate._auth import (
    Admission,
    Authenticator,
    NoAuthenticator,
    admit,
    authenticate_once,
    caller_fields,
    credentials_of,
    mark_principal,
    principal_message,
    session_expiry,
)
from goverse.gate._catalog import Catalog
from goverse.gate._client_proxy import ClientProxy, StreamEnd
from goverse.gate._clients import ClientRegistry
from goverse.gate._peer_limits import peer_address
from goverse.gate._router import Router
from goverse.gate._session import ClientSession
from goverse.server import CallMetricsInterceptor, CallsInFlight, Supervisor, log_context
from goverse.v1 import describe_pb2, gate_pb2, gate_pb2_grpc, node_pb2

_ObjectRequest = (
    gate_pb2.CallObjectRequest | gate_pb2.CreateObjectRequest | gate_pb2.DeleteObjectRequest
)

E = TypeVar("E")

STREAM_TASK_PREFIX = "client:"


class GateService(gate_pb2_grpc.GateServiceServicer):
    """Register and Session streams, and the three unary calls a client makes.

    A Session stream is a Register stream that also carries the client's calls
    (:class:`ClientSession`): both are one registered client of the registry, with the same
    pushes, draining and ``--max-clients`` bound; the client id of the calls on a Session is
    the stream's own, so they carry no credential. A Register stream is the client
    registry's (:meth:`ClientRegistry.connect`) and its proxy's (:meth:`ClientProxy.stream`):
    they decide what is sent and how the stream ends.
    This servicer adapts them to gRPC: the stream's task is adopted by the supervisor as
    ``client:<client-id>`` for as long as it runs, every event is yielded, and a
    :class:`StreamEnd` becomes the status it names, with its close reason as trailing metadata
    (a stream that ends with OK carries its close reason too). A stream ends by its handler
    returning or aborting, never by cancellation: cancelling the handler's task does not end
    the RPC for the client.

    Unary calls are verified against the registry before anything is routed (the service
    skeleton tracks them as calls in flight, which a stop lets finish). A client whose stream
    is still open may call while the gate drains; once its stream has ended, its credential is
    no longer valid.
    """

    def __init__(
        self,
        gate_id: str,
        registry: ClientRegistry,
        router: Router,
        supervisor: Supervisor,
        *,
        max_session_calls: int,
        max_message_bytes: int,
        metrics: CallMetricsInterceptor,
        authenticator: Authenticator | None = None,
        on_registration_refused: Callable[[str], None] | None = None,
        catalog: Catalog | None = None,
        calls: CallsInFlight | None = None,
    ) -> None:
        self._gate_id = gate_id
        self._calls = calls
        self._authenticator = authenticator if authenticator is not None else NoAuthenticator()
        self._on_registration_refused = on_registration_refused or (lambda reason: None)
        self._registry = registry
        self._router = router
        self._supervisor = supervisor
        self._max_session_calls = max_session_calls
        self._max_message_bytes = max_message_bytes
        self._metrics = metrics
        self._catalog = catalog

    async def Register(
        self, request: gate_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gate_pb2.RegisterResponse]:
        async for event in self._client_stream(context, lambda proxy: proxy.stream(self._gate_id)):
            yield event

    async def Session(
        self,
        request_iterator: AsyncIterator[gate_pb2.SessionRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[gate_pb2.SessionResponse]:
        def session(proxy: ClientProxy) -> AsyncGenerator[gate_pb2.SessionResponse, None]:
            return ClientSession(
                proxy,
                self._router,
                max_calls=self._max_session_calls,
                max_message_bytes=self._max_message_bytes,
                metrics=self._metrics,
                calls=self._calls,
            ).stream(self._gate_id, request_iterator)

        async for event in self._client_stream(context, session):
            yield event

    async def _client_stream(
        self,
        context: grpc.aio.ServicerContext,
        events: Callable[[ClientProxy], AsyncGenerator[E, None]],
    ) -> AsyncIterator[E]:
        """The stream of one registered client, Register or Session alike: admitted (the
        peer's registration rate, then the authenticator, once), registered with the registry
        for as long as it runs (ended by :func:`session_expiry` when its token expires), its
        task adopted as ``client:<client-id>``, ended as its :class:`StreamEnd` says."""
        # The registry refuses registrations once the gate drains, which it does before the
        # supervisor closes: adopt() cannot find the supervisor closed here.
        try:
            connection = context.peer() or ""
            peer = peer_address(connection)
            admission = await self._admit(context, peer)
            principal = principal_message(admission.principal)
            with (
                self._registry.connect(peer, principal, connection) as proxy,
                session_expiry(proxy, admission.expires_at),
                log_context(**caller_fields(proxy.caller), peer=peer),
                self._supervisor.adopt(STREAM_TASK_PREFIX + proxy.client_id),
            ):
                async with contextlib.aclosing(events(proxy)) as stream:
                    async for event in stream:
                        yield event
                context.set_trailing_metadata(wire.close_metadata(proxy.closed_by))
        except StreamEnd as end:
            await context.abort(
                end.code, end.details, trailing_metadata=wire.close_metadata(end.reason)
            )

    async def _admit(self, context: grpc.aio.ServicerContext, peer: str) -> Admission:
        """Who the registering client is, and until when; raises :class:`StreamEnd` when its
        peer registers too fast (RESOURCE_EXHAUSTED) or the authenticator refuses it
        (UNAUTHENTICATED)."""
        credentials = credentials_of(context.invocation_metadata(), context.peer() or "")
        try:
            return await admit(
                self._registry.peers,
                self._authenticator,
                credentials,
                peer,
                self._on_registration_refused,
            )
        except (ResourceExhausted, Unauthenticated, Unavailable) as refused:
            raise StreamEnd(refused.status_code, refused.message) from None

    def _authenticate(self, context: grpc.aio.ServicerContext) -> ClientProxy:
        metadata = context.invocation_metadata()
        proxy = self._registry.authenticate(
            wire.metadata_value(metadata, wire.CLIENT_ID_KEY),
            wire.metadata_value(metadata, wire.CREDENTIAL_KEY),
        )
        mark_principal(proxy.caller)
        return proxy

    @contextlib.contextmanager
    def _verified_call(
        self, request: _ObjectRequest, context: grpc.aio.ServicerContext
    ) -> Iterator[node_pb2.Caller]:
        """Authenticates the caller and binds the object to the log context; yields the trusted
        caller (client id and principal)."""
        proxy = self._authenticate(context)
        with log_context(
            **caller_fields(proxy.caller),
            object_type=request.object_type,
            object_id=request.object_id[:256],
        ):
            yield proxy.caller

    @translate_errors
    async def CallObject(
        self, request: gate_pb2.CallObjectRequest, context: grpc.aio.ServicerContext
    ) -> gate_pb2.CallObjectResponse:
        with self._verified_call(request, context) as caller:
            response = await self._router.call_object(caller, request, context.time_remaining())
        return gate_pb2.CallObjectResponse(response=response)

    @translate_errors
    async def CreateObject(
        self, request: gate_pb2.CreateObjectRequest, context: grpc.aio.ServicerContext
    ) -> gate_pb2.CreateObjectResponse:
        with self._verified_call(request, context) as caller:
            return await self._router.create_object(caller, request, context.time_remaining())

    @translate_errors
    async def DeleteObject(
        self, request: gate_pb2.DeleteObjectRequest, context: grpc.aio.ServicerContext
    ) -> gate_pb2.DeleteObjectResponse:
        with self._verified_call(request, context) as caller:
            return await self._router.delete_object(caller, request, context.time_remaining())

    @translate_errors
    async def Describe(
        self, request: describe_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> describe_pb2.DescribeResponse:
        """The catalog's union of the nodes' descriptions, to a caller admitted as
        :meth:`_admit_describe` says."""
        if self._catalog is None:
            raise Unimplemented("this gate serves no descriptions")
        await self._admit_describe(context)
        return await self._catalog.describe()

    async def _admit_describe(self, context: grpc.aio.ServicerContext) -> None:
        """Admits a Describe as a call (the client id and credential of a registration), or,
        without them, as a registration (the authenticator on its bearer token, taking no
        slot): a one-shot caller such as ``curl`` through the HTTP gate, or ``goverse
        describe``, needs no stream. Describe says which types and methods exist, no more
        than a caller the authenticator admits could learn by registering. Raises
        Unauthenticated (UNAUTHENTICATED) when neither admits it."""
        metadata = context.invocation_metadata()
        if any(
            wire.metadata_value(metadata, key) is not None
            for key in (wire.CLIENT_ID_KEY, wire.CREDENTIAL_KEY)
        ):
            self._authenticate(context)
            return
        credentials = credentials_of(metadata, context.peer() or "")
        # Not a registration: a refusal is logged, not counted as a refused registration.
        await authenticate_once(self._authenticator, credentials, lambda reason: None)
