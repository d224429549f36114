"""HttpGate: the gate's HTTP/JSON interface (``--http-listen``), served on the gate's event loop.

Routes (``docs/http.md``):

- ``POST /v1/objects/{type}/{id}/{method}``: the request as protobuf JSON (an empty body is
  ``{}``) -> the response as protobuf JSON;
- ``PUT /v1/objects/{type}/{id}`` -> ``{"created": bool}``; ``DELETE`` -> ``{"deleted": bool}``;
- ``GET /v1/describe``: the object types and their methods (the gate's Describe);
- ``GET /v1/events``: a browser session's server-sent events (:mod:`._http_events`);
- ``GET /web/<file>``: the files of the package's ``web`` directory (the JavaScript client).

Who calls: a browser session's calls carry ``Goverse-Client-Id`` and ``Goverse-Credential``
(checked as the gRPC metadata of the same names); a call without them runs as a one-shot
caller of its own that receives no pushes, admitted by the authenticator on its
``Authorization: Bearer`` token like a registration. Errors are JSON bodies with the HTTP
status of their gRPC code (:mod:`._http_errors`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import grpc
import structlog
from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage
from google.protobuf import json_format

from goverse import wire
from goverse.errors import (
    GoverseError,
    InvalidArgument,
    status_of,
)
from goverse.gate._auth import (
    Authenticator,
    Credentials,
    NoAuthenticator,
    admit,
    authenticate_once,
    bearer_token,
    caller_fields,
    mark_principal,
    principal_message,
    session_expiry,
)
from goverse.gate._catalog import Catalog
from goverse.gate._client_proxy import StreamEnd
from goverse.gate._clients import ClientRegistry
from goverse.gate._http_errors import (
    JSON,
    code_of,
    error_of,
    error_response,
    from_http_exception,
)
from goverse.gate._http_events import EVENT_STREAM, HEARTBEAT_S, EventStream, PushEvents
from goverse.gate._peer_limits import peer_address
from goverse.gate._router import Router
from goverse.ids import new_client_id, validate_method, validate_object_ref
from goverse.server import (
    BoundAddress,
    CallMetricsInterceptor,
    CallsInFlight,
    ListenError,
    Supervisor,
    SupervisorClosed,
    ascii_digits,
    demoted,
    log_context,
    served_call_span,
)
from goverse.v1 import gate_pb2, node_pb2

log = structlog.get_logger(__name__)

T = TypeVar("T")

WEB_DIR = Path(__file__).parent / "web"
"""The static files served at ``/web/``."""
CLIENT_ID_HEADER = "Goverse-Client-Id"
CREDENTIAL_HEADER = "Goverse-Credential"
TIMEOUT_HEADER = "Goverse-Timeout-Ms"
ACCESS_TOKEN_PARAM = "access_token"
"""The query parameter of ``/v1/events`` that may carry the bearer token: a browser's
``EventSource`` cannot send headers."""
ALLOWED_HEADERS = ", ".join(
    (hdrs.AUTHORIZATION, hdrs.CONTENT_TYPE, CLIENT_ID_HEADER, CREDENTIAL_HEADER, TIMEOUT_HEADER)
)
PREFLIGHT_MAX_AGE_S = 600
STOP_GRACE_S = 1.0
"""Seconds the HTTP server gives requests still running when it stops (its event streams
have ended by then: the stop's draining step waits for them)."""

TRACE_HEADERS = ("traceparent", "tracestate")
"""W3C trace context a caller may send: an HTTP call's span is then its child."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class QuietMalformedRequests(logging.Filter):
    """Turns aiohttp's ERROR "Error handling request from <address>" about a request its parser
    refused (a :class:`~aiohttp.http_exceptions.BadHttpMessage`: a bad header byte, a line
    too long, a bad Content-Length or chunk …, answered 400) into one DEBUG line, ``malformed
    HTTP request refused``, naming the error's kind, without its message or a traceback. The
    message quotes the request's bytes (a 25 KB line for 5,000 bad header bytes), and any
    client could write such lines at will; a failure of the gate itself stays an ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if record.levelno < logging.ERROR or not isinstance(error, BadHttpMessage):
            return True
        record.error = type(error).__name__
        return demoted(record, "malformed HTTP request refused")


SERVER_LOGGER = logging.getLogger(f"{__name__}.server")
"""What aiohttp's request handlers log to (instead of ``aiohttp.server``): quieted by
:class:`QuietMalformedRequests`."""
SERVER_LOGGER.addFilter(QuietMalformedRequests())


class HttpGate:
    """The HTTP server of one gate on `listen` (port 0: any free port).

    :meth:`start` binds (raises :class:`~goverse.server.ListenError` when it cannot) and
    serves; :meth:`stop` stops listening, closes idle connections and gives requests still
    running :data:`STOP_GRACE_S`, then cancels them; it is idempotent and safe before start.
    Event streams are registered clients of `registry`, their handler tasks adopted by
    `supervisor` under `stream_prefix` like gRPC Register streams: the gate's stop drains them
    (``draining``, then the stream ends) before it stops this server.
    """

    def __init__(
        self,
        listen: str,
        *,
        gate_id: str,
        registry: ClientRegistry,
        router: Router,
        catalog: Catalog,
        authenticator: Authenticator,
        supervisor: Supervisor,
        stream_prefix: str,
        cors_origins: Iterable[str] = (),
        max_body_bytes: int,
        heartbeat_s: float = HEARTBEAT_S,
        on_registration_refused: Callable[[str], None] | None = None,
        metrics: CallMetricsInterceptor | None = None,
        calls: CallsInFlight | None = None,
    ) -> None:
        self._listen = listen
        self._metrics = metrics
        self._calls = calls
        self._gate_id = gate_id
        self._registry = registry
        self._router = router
        self._catalog = catalog
        self._push_events = PushEvents(catalog)
        self._authenticator = authenticator
        self._anonymous = isinstance(authenticator, NoAuthenticator)
        self._supervisor = supervisor
        self._stream_prefix = stream_prefix
        self._cors = frozenset(cors_origins)
        self._heartbeat_s = heartbeat_s
        self._on_refused = on_registration_refused or (lambda reason: None)
        self.app = self._build(max_body_bytes)
        self._runner: web.AppRunner | None = None
        self._bound: BoundAddress | None = None

    @property
    def address(self) -> str:
        """Where a process on this machine reaches the server (``host:port``; once started)."""
        if self._bound is None:
            raise RuntimeError("the HTTP server has not started")
        return self._bound.local

    def _build(self, max_body_bytes: int) -> web.Application:
        app = web.Application(client_max_size=max_body_bytes, middlewares=[self._errors])
        routes: list[tuple[str, str, Handler]] = [
            ("/v1/objects/{type}/{id}/{method}", hdrs.METH_POST, self._call),
            ("/v1/objects/{type}/{id}", hdrs.METH_PUT, self._create),
            ("/v1/objects/{type}/{id}", hdrs.METH_DELETE, self._delete),
            ("/v1/describe", hdrs.METH_GET, self._describe),
            ("/v1/events", hdrs.METH_GET, self._events),
        ]
        resources: dict[str, web.Resource] = {}
        for path, method, handler in routes:
            if path not in resources:
                resources[path] = app.router.add_resource(path)
                resources[path].add_route(hdrs.METH_OPTIONS, self._preflight)
            resources[path].add_route(method, handler)
        app.router.add_static("/web/", WEB_DIR, show_index=False)
        if self._cors:  # without allowed origins no response gets a CORS header
            app.on_response_prepare.append(self._cors_headers)
        return app

    async def start(self) -> None:
        host, _, port = self._listen.rpartition(":")
        # Cancelled when the client goes away: a call it gave up on stops, an event stream ends.
        runner = web.AppRunner(
            self.app,
            access_log=None,
            logger=SERVER_LOGGER,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=STOP_GRACE_S,
        )
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, host.strip("[]"), int(port))
        try:
            await site.start()
        except OSError as error:
            raise ListenError(f"cannot serve HTTP on {self._listen}: {error}") from error
        bound_port = int(runner.addresses[0][1])
        self._bound = BoundAddress.of(self._listen, bound_port)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # -- middleware and CORS ---------------------------------------------------------------

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every refusal as a JSON error body (``docs/http.md``), in this one place."""
        try:
            return await handler(request)
        except GoverseError as error:
            return error_of(error)
        except web.HTTPException as error:
            if error.status < 400:
                raise
            return from_http_exception(error)
        except web.RequestPayloadError as error:  # a body that does not decompress
            refused = error_response(
                grpc.StatusCode.INVALID_ARGUMENT, f"the body could not be read: {error}"
            )
            refused.force_close()  # the rest of the body cannot be found: the connection ends
            return refused
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("HTTP request failed", path=request.path[:200])
            return error_response(grpc.StatusCode.INTERNAL, "unexpected error in the gate")

    def _allowed_origin(self, request: web.Request) -> str | None:
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None:
            return None
        if "*" in self._cors:
            return "*"
        return origin if origin in self._cors else None

    async def _cors_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Registered only when origins are configured (``_build``)."""
        allowed = self._allowed_origin(request)
        if allowed is not None:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = allowed
        if "*" not in self._cors:
            response.headers[hdrs.VARY] = hdrs.ORIGIN

    async def _preflight(self, request: web.Request) -> web.StreamResponse:
        """A browser's preflight: allowed for a configured origin only."""
        if self._allowed_origin(request) is None:
            return error_response(
                grpc.StatusCode.PERMISSION_DENIED,
                "this origin may not call the gate (--http-cors-origins)",
            )
        methods = sorted(
            route.method
            for route in request.match_info.route.resource or ()
            if route.method != hdrs.METH_OPTIONS
        )
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(methods),
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ALLOWED_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: str(PREFLIGHT_MAX_AGE_S),
            },
        )

    # -- who calls -------------------------------------------------------------------------

    async def _caller(self, request: web.Request) -> node_pb2.Caller:
        """A browser session's caller (its id and credential headers), else a one-shot one."""
        client_id = request.headers.get(CLIENT_ID_HEADER)
        credential = request.headers.get(CREDENTIAL_HEADER)
        if client_id is not None or credential is not None:
            return self._registry.authenticate(client_id, credential).caller
        principal = None
        if not self._anonymous:  # building credentials no one reads: ~3 % of a call
            token = bearer_token(
                [(wire.AUTHORIZATION_KEY, request.headers.get(hdrs.AUTHORIZATION))]
            )
            admission = await authenticate_once(
                self._authenticator, _credentials(request, token), self._on_refused
            )
            principal = admission.principal
        return node_pb2.Caller(
            client_id=new_client_id(self._gate_id), principal=principal_message(principal)
        )

    # -- calls -----------------------------------------------------------------------------

    # Each handler's timing starts as it does, so that a request refused before it is routed
    # (its caller, deadline, names or body) is measured as the same refusal over gRPC is
    # (``_refused_early``); a routed one goes on with the same start to ``_served``.

    async def _call(self, request: web.Request) -> web.StreamResponse:
        object_type, object_id, method = (request.match_info[k] for k in ("type", "id", "method"))
        started = time.perf_counter()
        try:
            caller = await self._caller(request)
            timeout = _timeout_of(request)
            # Checked before the catalog, as the router checks a gRPC call before a node does:
            # a malformed name or id is INVALID_ARGUMENT over both, never an unknown type.
            validate_object_ref(object_type, object_id)
            validate_method(method)
            types = await self._catalog.method(object_type, method)
            body = await request.read()
            message = self._catalog.request_from_json(types, body if body.strip() else b"{}")
            call = gate_pb2.CallObjectRequest(
                object_type=object_type, object_id=object_id, method=method
            )
            wire.pack_into(call.request, message)  # in place: a packed Any would be copied
        except BaseException as error:
            self._refused_early("call", object_type, method, error, started)
            raise
        response = await self._served(
            request, "call", call, caller, self._router.call_object(caller, call, timeout), started
        )
        return _json(self._catalog.response_dict(types, response))

    async def _create(self, request: web.Request) -> web.StreamResponse:
        create = gate_pb2.CreateObjectRequest(**_reference(request))
        reply = await self._lifecycle(request, "create", create, self._router.create_object)
        return _json({"created": reply.created})

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        delete = gate_pb2.DeleteObjectRequest(**_reference(request))
        reply = await self._lifecycle(request, "delete", delete, self._router.delete_object)
        return _json({"deleted": reply.deleted})

    async def _lifecycle(
        self, request: web.Request, op: str, message: Any, route: Callable[..., Awaitable[T]]
    ) -> T:
        """Serves a create or delete `message`: its caller and deadline (a refusal of either
        measured as :meth:`_refused_early`), then `route` (the router's method) as
        :meth:`_served`."""
        started = time.perf_counter()
        try:
            caller = await self._caller(request)
            timeout = _timeout_of(request)
        except BaseException as error:
            self._refused_early(op, message.object_type, "", error, started)
            raise
        routed = route(caller, message, timeout)
        return await self._served(request, op, message, caller, routed, started)

    def _refused_early(
        self, op: str, object_type: str, method: str, error: BaseException, started: float
    ) -> None:
        """Measures a call, create or delete that `error` refused before it was routed, under
        the labels the gRPC RPC it stands for gets (the names as the gate's known names label
        them: ``_other`` for any it does not serve) and the code it is answered with."""
        if self._metrics is not None:
            self._metrics.record(
                wire.CALL_OPS[op],
                _Named(object_type, method),
                code_of(error),
                time.perf_counter() - started,
            )

    async def _served(
        self,
        request: web.Request,
        op: str,
        message: Any,
        caller: node_pb2.Caller,
        routed: Awaitable[T],
        started: float,
    ) -> T:
        """Awaits a routed call as the unary RPC it stands for is served: in its SERVER span
        (the child of the caller's ``traceparent``), with the caller and object in the log
        context, measured from `started` (its handler's start) in the gate's call-duration
        histogram under the RPC's labels, and counted in flight with the gate's calls (a stop
        lets it finish, as a unary RPC)."""
        task = asyncio.current_task()
        if self._calls is not None and task is not None:  # aiohttp: one task per request
            self._calls.track(task)
        # W3C trace context is ASCII: a header with other bytes is malformed, dropped as such.
        carrier = {
            key: value
            for key in TRACE_HEADERS
            if (value := request.headers.get(key)) and value.isascii()
        }
        code = grpc.StatusCode.OK
        try:
            with (
                served_call_span(wire.GATE_CALL_METHODS[op], carrier),
                log_context(
                    **caller_fields(caller),
                    object_type=message.object_type,
                    object_id=message.object_id[:256],
                ),
            ):
                mark_principal(caller)
                return await routed
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as error:
            code = status_of(error)
            raise
        finally:
            if self._metrics is not None:
                self._metrics.record(
                    wire.CALL_OPS[op], message, code, time.perf_counter() - started
                )

    async def _describe(self, request: web.Request) -> web.StreamResponse:
        await self._caller(request)  # admitted as a call is
        described = await self._catalog.describe()
        return _json(
            {
                "types": [
                    json_format.MessageToDict(
                        description, always_print_fields_with_no_presence=True
                    )
                    for description in described.types
                ]
            }
        )

    # -- event streams ---------------------------------------------------------------------

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """A browser session: registered like a gRPC Register stream (the peer's rate, the
        authenticator, the registry's bounds), its handler adopted by the supervisor for as
        long as it streams."""
        connection = _connection(request)
        peer = peer_address(connection)
        token = bearer_token(
            [(wire.AUTHORIZATION_KEY, request.headers.get(hdrs.AUTHORIZATION))]
        ) or request.query.get(ACCESS_TOKEN_PARAM)
        admission = await admit(
            self._registry.peers,
            self._authenticator,
            _credentials(request, token),
            peer,
            self._on_refused,
        )
        principal = principal_message(admission.principal)
        try:
            with (
                self._registry.connect(peer, principal, connection) as proxy,
                session_expiry(proxy, admission.expires_at),
                log_context(**caller_fields(proxy.caller), peer=peer),
                self._supervisor.adopt(self._stream_prefix + proxy.client_id),
            ):
                response = web.StreamResponse(
                    headers={
                        hdrs.CONTENT_TYPE: EVENT_STREAM,
                        hdrs.CACHE_CONTROL: "no-cache",
                        "X-Accel-Buffering": "no",  # nginx: pass events on at once
                    }
                )
                response.force_close()  # the connection ends with the stream
                await response.prepare(request)
                stream = EventStream(
                    proxy,
                    self._push_events,
                    response,
                    request.transport,
                    heartbeat_s=self._heartbeat_s,
                )
                await stream.run(self._gate_id)
                return response
        except StreamEnd as refused:
            return error_response(refused.code, refused.details)
        except SupervisorClosed:
            return error_response(grpc.StatusCode.UNAVAILABLE, "the gate is shutting down")


class _Named(NamedTuple):
    """The names that label a call refused before its request message was built."""

    object_type: str
    method: str


def _json(value: Any) -> web.Response:
    return web.json_response(value, content_type=JSON)


def _credentials(request: web.Request, token: str | None) -> Credentials:
    """What an HTTP client presents to the authenticator: `token` and its headers."""
    metadata = {key.lower(): value for key, value in request.headers.items()}
    return Credentials(token, metadata, _connection(request))


def _connection(request: web.Request) -> str:
    """The client's connection named as gRPC names a peer (``ipv4:10.0.0.7:51234``), so the
    per-peer bounds count HTTP and gRPC clients of one address together."""
    peername = request.transport.get_extra_info("peername") if request.transport else None
    if not peername:
        return "unknown"
    host, port = peername[0], peername[1]
    return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"


def _reference(request: web.Request) -> dict[str, str]:
    """The object a create's or delete's path names, as its request's fields."""
    return {"object_type": request.match_info["type"], "object_id": request.match_info["id"]}


def _timeout_of(request: web.Request) -> float | None:
    """The call's deadline in seconds from ``Goverse-Timeout-Ms``; None without one."""
    text = request.headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    digits = text.strip()
    # A deadline is at most what a call frame carries (a uint32 of milliseconds, 49 days); the
    # length first, as int() refuses more than 4,300 digits.
    too_long = len(digits) > len(str(wire.MAX_TIMEOUT_MS))
    longest = wire.MAX_TIMEOUT_MS
    if not ascii_digits(digits) or too_long or not 0 < int(digits) <= longest:
        raise InvalidArgument(
            f"{TIMEOUT_HEADER} must be a positive number of milliseconds, at most {longest}"
        )
    return int(digits) / 1000


__all__ = [
    "ACCESS_TOKEN_PARAM",
    "CLIENT_ID_HEADER",
    "CREDENTIAL_HEADER",
    "TIMEOUT_HEADER",
    "WEB_DIR",
    "HttpGate",
]
