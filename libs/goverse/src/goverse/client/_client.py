"""Client: the asyncio SDK that registers with a gate, calls objects and receives pushes."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message

from goverse import wire
from goverse._tracing import start_call_span
from goverse.client._calls import CallStream, NotSent
from goverse.client._gates import GateChooser
from goverse.client._messages import MessageBuffer
from goverse.client._tls import ClientTLS
from goverse.errors import CallError
from goverse.transport import Backoff, ChannelPool, Keepalive, channel_options
from goverse.v1 import describe_pb2, gate_pb2, gate_pb2_grpc

M = TypeVar("M", bound=Message)
ReconnectCallback = Callable[[str, str], Awaitable[None] | None]
TokenSource = str | Callable[[], str | Awaitable[str]]
"""A bearer token, or a function (plain or async) returning a fresh one."""

# The SDK logs with the standard library, as a library should: the application decides where
# its lines go (the services route them through their structlog renderer).
log = logging.getLogger(__name__)


# However the jitter falls, a registration is never retried sooner than this: no tight loop.
MIN_RETRY_DELAY = 0.01
# How long a call refused with UNAUTHENTICATED waits to see whether its registration has just
# ended (then it is re-sent once on the next registration; the gate refused it unforwarded).
REGISTRATION_END_GRACE = 2.0
# Codes a gate ends a registration with when it refuses it (not when it failed or left).
_REFUSALS = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# At most this many characters of a refusal's or failure's details go into connect()'s error:
# the details come from the network (a gate, a proxy, the TLS library).
FAILURE_SHOWN_CHARS = 500
# How long close() waits for the registration task it cancelled; a bound, so that a task that
# ignores its cancellation cannot hang close().
CLOSE_TIMEOUT = 5.0


class ClientState(enum.Enum):
    UNOPENED = "unopened"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    CLOSED = "closed"


class ClientClosedError(RuntimeError):
    """The client was closed; it cannot be used again."""


class _Resend(Exception):
    """A call the gate never saw: it may be sent on the next registration, else `error`."""

    def __init__(self, error: CallError) -> None:
        super().__init__(error.message)
        self.error = error


class _SessionUnimplemented(Exception):
    """The gate has no Session (an older gate): register with Register instead."""


@dataclass(eq=False)
class _Session:
    gate: str
    client_id: str
    credential: str
    stub: gate_pb2_grpc.GateServiceStub
    calls: CallStream | None = None
    """The calls of a Session registration; None for a Register one (unary calls)."""
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the Register stream of this registration has ended."""
    resync: asyncio.Task[None] | None = None
    """The ``on_reconnect`` callback called for this registration, while it runs."""

    async def end(self) -> None:
        """Marks the registration ended; a callback still running for it is cancelled (its
        calls could not be answered any more) and awaited for ``CLOSE_TIMEOUT`` at most."""
        self.ended.set()
        if self.resync is not None and not self.resync.done():
            self.resync.cancel()
            # asyncio.wait: a cancellation of this task must not be taken for the callback's.
            await asyncio.wait({self.resync}, timeout=CLOSE_TIMEOUT)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((wire.CLIENT_ID_KEY, self.client_id), (wire.CREDENTIAL_KEY, self.credential))


class Client:
    """A connection to goverse through any of `gates` (a list of ``host:port`` addresses; one
    string is refused with TypeError, an empty list with ValueError).

    ``connect()`` registers with a randomly chosen gate and keeps that registration alive in a
    background task: when the stream breaks, or the gate announces it is draining, the client
    registers again (with another gate when it can), with exponential backoff and full jitter.
    A gate that failed or drained is avoided for ``reconnect_max`` (at least a second); when
    every gate is avoided, all are tried again, still with backoff. Backoff resets once a
    registration has lasted ``stable_after``.

    Each registration has a new client id; ``on_reconnect(old_id, new_id)`` is called after
    every re-registration, to resynchronise. An async one runs in a task beside the
    registration, which goes on reading meanwhile, so the calls it makes are answered; it is
    cancelled if its registration ends first. One that raises is logged.

    Pushed messages are buffered (``message_buffer``; when full the client stops reading, so
    its gate sees a slow consumer, ends the stream with RESOURCE_EXHAUSTED, and the client
    registers again: pushes in between are lost) and read with :meth:`messages`.

    With `tls` (:class:`ClientTLS`), the client speaks TLS to its gates and verifies their
    certificate; without it, plaintext (a gate with ``--tls-cert`` refuses that).

    Keepalive pings every ``keepalive_time`` notice a gate that stopped answering (a frozen
    process, a dead network) within ``keepalive_time + keepalive_timeout``, and the client
    moves to another gate. Gates accept pings every 5 s by default (``--keepalive-min-time``):
    a client configured to ping faster than its gates accept is cut off.

    Errors from calls are :class:`goverse.errors.CallError` with the gRPC status code.

    ``token`` authenticates the client to gates that require it (``--authenticator``): a
    string, or a function (plain or async) returning a fresh token, called before every
    registration (a reconnection included); it is sent as ``authorization: Bearer <token>``
    with the registration only. A gate that refuses it ends the registration with
    UNAUTHENTICATED, and the client keeps retrying with backoff. A gate also ends a
    registration when its token expires (UNAUTHENTICATED, close reason ``token_expired``):
    the client registers again with its usual backoff, with a fresh token from the function
    (a new client id: ``on_reconnect`` is called), and the gate is not counted as failed.

    The registration is a ``Session`` stream that also carries the calls: many calls in one
    stream message when several are ready, replies matched by call id, the call's timeout
    and cancellation carried with it (a caller cancelled, or out of time, frees the call on
    gate and node). Against a gate that answers ``Session`` with UNIMPLEMENTED (an older
    gate), the client registers with ``Register`` and makes unary calls instead.

    Failure semantics of a call:

    - the stream breaking (the gate died, the network failed, the gate drained) fails every
      call in flight on it at once with UNAVAILABLE: never a hang until the deadline;
    - a call that was never written to the stream (the stream broke first), that the gate
      refused without forwarding it because it drains, or that was still waiting when the
      gate's draining notice came (a gate answers every call it started before that notice)
      is sent once more on the next registration;
    - a call that was written is not sent again by the client: it may have run. Retrying it
      is the caller's decision (make it idempotent first);
    - over unary calls, a call the gate refused because the registration it carried had just
      ended (UNAUTHENTICATED, so never forwarded) is sent once more on the next registration.
    """

    def __init__(
        self,
        gates: Sequence[str],
        *,
        call_timeout: timedelta = timedelta(seconds=30),
        connect_timeout: timedelta = timedelta(seconds=30),
        reconnect_initial: timedelta = timedelta(milliseconds=100),
        reconnect_max: timedelta = timedelta(seconds=5),
        stable_after: timedelta = timedelta(seconds=10),
        message_buffer: int = 10_000,
        on_reconnect: ReconnectCallback | None = None,
        max_message_bytes: int = 4 * 1024 * 1024,
        keepalive_time: timedelta = timedelta(seconds=10),
        keepalive_timeout: timedelta = timedelta(seconds=5),
        tls: ClientTLS | None = None,
        rng: random.Random | None = None,
        token: TokenSource | None = None,
    ) -> None:
        self._token = token
        self._rng = rng or random.Random()
        self._chooser = GateChooser(
            gates, quarantine=max(reconnect_max.total_seconds(), 1.0), rng=self._rng
        )
        self._call_timeout = call_timeout.total_seconds()
        self._connect_timeout = connect_timeout.total_seconds()
        self._backoff = Backoff(reconnect_initial, reconnect_max, self._rng)
        self._stable_after = stable_after.total_seconds()
        self._registered_at = 0.0
        keepalive = Keepalive(time=keepalive_time, timeout=keepalive_timeout)
        options = channel_options(max_message_bytes, keepalive)
        if tls is not None:
            options += tls.channel_options()
        self._channels = ChannelPool(
            options, credentials=None if tls is None else tls.credentials()
        )
        self._max_message_bytes = max_message_bytes
        self._messages = MessageBuffer(message_buffer)
        self._on_reconnect = on_reconnect
        self._state = ClientState.UNOPENED
        self._session: _Session | None = None
        self._connected = asyncio.Event()
        self._registrations = 0
        self._last_refusal = ""
        """How the last registration a gate refused ended (``UNAUTHENTICATED: …``), for the
        error of a connect() that timed out."""
        self._last_failure = ""
        """How the last registration that failed otherwise ended (``<gate>: UNAVAILABLE: …``:
        connection refused, a TLS handshake that failed …), for the same error. Both are
        forgotten when the client registers."""
        self._runner: asyncio.Task[None] | None = None

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> ClientState:
        return self._state

    @property
    def client_id(self) -> str:
        """The id of the current registration; it changes when the client reconnects."""
        if self._session is None:
            raise RuntimeError("the client is not connected")
        return self._session.client_id

    @property
    def gate(self) -> str:
        """The address of the gate of the current registration."""
        if self._session is None:
            raise RuntimeError("the client is not connected")
        return self._session.gate

    @property
    def registrations(self) -> int:
        """How many times the client has registered (1 after connect, +1 per reconnection)."""
        return self._registrations

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Registers with a gate; returns once registered (retrying for ``connect_timeout``).

        Raises :class:`CallError` (UNAVAILABLE) when no gate accepted in time; the client
        is then closed.
        """
        if self._state is ClientState.CLOSED:
            raise ClientClosedError("the client is closed")
        if self._runner is None:
            self._state = ClientState.CONNECTING
            self._runner = asyncio.get_running_loop().create_task(
                self._keep_registered(), name="goverse-client"
            )
        try:
            await self.wait_connected(self._connect_timeout)
        except BaseException:
            await self.close()
            raise

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Waits until the client holds a registration."""
        if self._state is ClientState.CLOSED:
            raise ClientClosedError("the client is closed")
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            why = []
            if self._last_refusal:
                why.append(f"last refusal: {self._last_refusal}")
            if self._last_failure:
                why.append(f"last failure: {self._last_failure}")
            said = f" ({'; '.join(why)})" if why else ""
            raise CallError(
                grpc.StatusCode.UNAVAILABLE,
                f"no gate of {', '.join(self._chooser.gates)} accepted a registration "
                f"within {timeout}s{said}",
            ) from None

    async def close(self) -> None:
        """Ends the registration and the background task; idempotent. :meth:`messages`
        iterators end after what was already received.

        The background task is cancelled and awaited for up to ``CLOSE_TIMEOUT`` seconds (it
        ends at once, unless an ``on_reconnect`` callback ignores its cancellation: then it is
        logged and left behind). The channels are closed and the iterators ended even when
        close() itself is cancelled; a second call returns at once.
        """
        if self._state is ClientState.CLOSED:
            return
        self._state = ClientState.CLOSED
        self._connected.clear()
        try:
            if self._runner is not None:
                self._runner.cancel()
                # asyncio.wait, not `await runner` under suppress(CancelledError): that would
                # take a cancellation of close() itself for the runner's and swallow it.
                _, pending = await asyncio.wait({self._runner}, timeout=CLOSE_TIMEOUT)
                if pending:
                    log.warning(
                        "the registration task did not end within %ss of close()", CLOSE_TIMEOUT
                    )
        finally:
            self._session = None
            await self._channels.close()
            self._messages.end()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- calls -------------------------------------------------------------------------------

    async def call(
        self,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        timeout: float | None = None,
    ) -> M:
        """Calls `method` of object ``(object_type, object_id)``, activating it if needed."""
        # Built in place: a message given to a constructor is copied, a nested one again.
        session_call = gate_pb2.SessionCall()
        message = session_call.call
        message.object_type = object_type
        message.object_id = object_id
        message.method = method
        wire.pack_into(message.request, request)
        reply = await self._call(session_call, timeout)
        assert isinstance(reply, gate_pb2.CallObjectResponse)
        try:
            return wire.unpack(reply.response, response_type)
        except wire.UnpackError as error:
            raise CallError(
                grpc.StatusCode.INTERNAL, f"{object_type}.{method} answered: {error}"
            ) from None

    async def create(
        self, object_type: str, object_id: str, *, timeout: float | None = None
    ) -> bool:
        """Activates an object; False when it was already active."""
        message = gate_pb2.CreateObjectRequest(object_type=object_type, object_id=object_id)
        reply = await self._call(gate_pb2.SessionCall(create=message), timeout)
        assert isinstance(reply, gate_pb2.CreateObjectResponse)
        return reply.created

    async def delete(
        self, object_type: str, object_id: str, *, timeout: float | None = None
    ) -> bool:
        """Deactivates an object; False when it was not active."""
        message = gate_pb2.DeleteObjectRequest(object_type=object_type, object_id=object_id)
        reply = await self._call(gate_pb2.SessionCall(delete=message), timeout)
        assert isinstance(reply, gate_pb2.DeleteObjectResponse)
        return reply.deleted

    async def describe(self, *, timeout: float | None = None) -> describe_pb2.DescribeResponse:
        """The object types the gate's nodes host, their methods and the descriptors of their
        messages (``GateService.Describe``), asked as the current registration; turn it into
        message classes with :class:`goverse.descriptions.Descriptions`. Refused because that
        registration had just ended (its gate stopped), it is asked once more on the next one,
        as a call is."""
        budget = self._budget(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        for attempt in range(2):
            session = await self._current_session(deadline - loop.time())
            try:
                response = await self._unary(
                    session, "Describe", describe_pb2.DescribeRequest(), deadline
                )
            except _Resend as resend:
                if attempt:
                    raise resend.error from None
                continue
            assert isinstance(response, describe_pb2.DescribeResponse)
            return response
        raise AssertionError("unreachable")

    async def _call(self, session_call: gate_pb2.SessionCall, timeout: float | None) -> Message:
        """Makes `session_call`'s op (``call``, ``create``, ``delete``) over the current
        registration: on its Session stream, or as the unary RPC of the op's message when it
        has none. A call the gate never saw is sent once more, on the next registration."""
        op = session_call.WhichOneof("op")
        assert op is not None, "a session call needs its op"
        budget = self._budget(timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget
        for attempt in range(2):
            session = await self._current_session(deadline - loop.time())
            try:
                if session.calls is None:
                    message = getattr(session_call, op)
                    return await self._unary(session, wire.CALL_OPS[op], message, deadline)
                return await self._on_session(session, session_call, op, deadline)
            except _Resend as resend:
                if attempt:
                    raise resend.error from None
        raise AssertionError("unreachable")

    async def _on_session(
        self, session: _Session, session_call: gate_pb2.SessionCall, op: str, deadline: float
    ) -> Message:
        assert session.calls is not None
        span, carrier = start_call_span(wire.GATE_CALL_METHODS[op])
        try:
            timeout = max(deadline - asyncio.get_running_loop().time(), 0.001)
            reply: Message = await session.calls.call(session_call, timeout, carrier)
        except NotSent:
            span.end_with(grpc.StatusCode.UNAVAILABLE, "the gate did not forward the call")
            if self._session is session:
                # The gate takes no more calls (it drains, or its stream broke): later calls
                # wait for the next registration rather than be refused here too.
                self._connected.clear()
            raise _Resend(
                CallError(
                    grpc.StatusCode.UNAVAILABLE,
                    f"gate {session.gate} did not forward the call (its session ended)",
                )
            ) from None
        except CallError as error:
            span.end_with(error.status_code, f"{error.status_code.name}: {error.message}")
            raise
        except BaseException as error:
            span.end(error)
            raise
        span.end_with(grpc.StatusCode.OK)
        return reply

    def _budget(self, timeout: float | None) -> float:
        """The seconds a call may take: `timeout` (``call_timeout`` when None), at most the
        longest timeout a call carries (49 days: ``inf`` means that)."""
        budget = self._call_timeout if timeout is None else timeout
        if math.isnan(budget):
            raise ValueError("a call's timeout is a number of seconds, not NaN")
        return min(budget, wire.MAX_TIMEOUT_MS / 1000)

    async def _unary(
        self, session: _Session, rpc: str, message: Message, deadline: float
    ) -> Message:
        loop = asyncio.get_running_loop()
        try:
            reply: Message = await getattr(session.stub, rpc)(
                message, timeout=max(deadline - loop.time(), 0.001), metadata=session.metadata
            )
            return reply
        except grpc.aio.AioRpcError as error:
            # UNAUTHENTICATED from a registration that has just ended: the gate refused
            # before forwarding, so the call can be sent once more on the new one.
            if error.code() == grpc.StatusCode.UNAUTHENTICATED and await self._registration_ended(
                session, deadline - loop.time()
            ):
                raise _Resend(CallError.from_rpc_error(error)) from error
            raise CallError.from_rpc_error(error) from error

    async def _registration_ended(self, session: _Session, timeout: float) -> bool:
        """Whether `session` has ended, or ends within a short grace (its end may reach the
        client after a call's refusal)."""
        if not session.ended.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(min(timeout, REGISTRATION_END_GRACE), 0.0)):
                    await session.ended.wait()
        return session.ended.is_set()

    async def _current_session(self, timeout: float) -> _Session:
        if self._state is ClientState.CLOSED:
            raise ClientClosedError("the client is closed")
        if self._state is ClientState.UNOPENED:
            raise RuntimeError("call connect() first")
        if self._session is None or not self._connected.is_set():
            await self.wait_connected(max(timeout, 0.0))
        assert self._session is not None
        return self._session

    # -- pushes ------------------------------------------------------------------------------

    def messages(self) -> AsyncIterator[any_pb2.Any]:
        """Pushed messages in the order received, as ``google.protobuf.Any``; ends at close.

        A read may be cancelled (``async with asyncio.timeout(…): await anext(messages)``):
        it loses no message and the iterator stays usable. Iterators of one client share its
        buffer: each message goes to one of them.
        """
        return self._messages.reader()

    # -- the registration loop ---------------------------------------------------------------

    async def _keep_registered(self) -> None:
        while True:
            gate = self._chooser.choose()
            draining = False
            registrations = self._registrations
            try:
                draining = await self._registration(gate)
            except grpc.aio.AioRpcError as error:
                reason = wire.close_reason_of(error.trailing_metadata())
                if reason is wire.CloseReason.SLOW_CONSUMER:
                    # The gate is fine; this client did not read its pushes in time.
                    log.warning(
                        "disconnected by gate %s as a slow consumer", gate, extra={"gate": gate}
                    )
                elif reason is wire.CloseReason.TOKEN_EXPIRED:
                    # The gate is fine; the session outlived its token. The next registration
                    # asks the token function for a fresh one.
                    log.info(
                        "registration with gate %s ended: its token expired; registering again",
                        gate,
                        extra={"gate": gate, "code": error.code().name},
                    )
                else:
                    self._chooser.mark_failed(gate)
                    details = _shown(error.details() or "")
                    if error.code() in _REFUSALS:
                        self._last_refusal = f"{error.code().name}: {details}"
                    else:
                        self._last_failure = f"{gate}: {error.code().name}: {details}"
                    log.info(
                        "registration with gate %s ended: %s: %s",
                        gate,
                        error.code().name,
                        error.details(),
                        extra={"gate": gate, "code": error.code().name},
                    )
            except Exception:  # a bug must not end the registration loop for good
                self._chooser.mark_failed(gate)
                log.exception("registration with gate %s crashed", gate, extra={"gate": gate})
            finally:
                self._connected.clear()
                if self._state is ClientState.CONNECTED:
                    self._state = ClientState.CONNECTING
            loop = asyncio.get_running_loop()
            if (
                self._registrations > registrations
                and loop.time() - self._registered_at >= self._stable_after
            ):
                self._backoff.reset()
            if draining:
                self._chooser.mark_failed(gate)
                delay = self._rng.uniform(0.0, self._backoff.initial.total_seconds())
            else:
                delay = self._backoff.next_delay()
            await asyncio.sleep(max(delay, MIN_RETRY_DELAY))

    async def _registration(self, gate: str) -> bool:
        """One registration with `gate`; returns True when it ended because the gate drains."""
        stub = gate_pb2_grpc.GateServiceStub(self._channels.get(gate))
        metadata = await self._auth_metadata()
        # Session first on every registration, not remembered per address: one address may
        # be a Kubernetes Service whose gates are being upgraded.
        try:
            return await self._session_stream(gate, stub, metadata)
        except _SessionUnimplemented:
            log.debug(
                "gate %s has no Session stream: registering with Register, unary calls",
                gate,
                extra={"gate": gate},
            )
        return await self._register(gate, stub, metadata)

    async def _auth_metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata of a registration: the bearer token, fresh from ``token``."""
        if self._token is None:
            return ()
        token = self._token if isinstance(self._token, str) else self._token()
        if inspect.isawaitable(token):
            token = await token
        return ((wire.AUTHORIZATION_KEY, f"Bearer {token}"),)

    async def _session_stream(
        self,
        gate: str,
        stub: gate_pb2_grpc.GateServiceStub,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> bool:
        """One registration with `gate` over its Session stream, which carries the calls."""
        stream = stub.Session(metadata=metadata)
        calls = CallStream(stream, self._max_message_bytes)
        writer: asyncio.Task[None] | None = None
        session: _Session | None = None
        try:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    first = await stream.read()
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    raise _SessionUnimplemented() from None
                raise
            if first is grpc.aio.EOF or first.WhichOneof("event") != "registered":
                raise CallError(grpc.StatusCode.INTERNAL, f"gate {gate} did not register us")
            if first.registered.max_message_bytes:
                calls.limit(first.registered.max_message_bytes)
            writer = asyncio.get_running_loop().create_task(
                calls.run_writer(), name="goverse-client-writer"
            )
            session = self._registered(gate, stub, first.registered, calls)
            while (event := await stream.read()) is not grpc.aio.EOF:
                kind = event.WhichOneof("event")
                if kind == "replies":
                    calls.resolve(event.replies)
                elif kind == "messages":
                    await self._messages.put(event.messages.messages)
                elif kind == "draining":
                    self._log_draining(gate, event.draining.reason)
                    # The gate answered every call it started before Draining, and starts
                    # none after: a call still waiting was not forwarded; the next gate takes it.
                    self._connected.clear()
                    calls.fail(
                        CallError(grpc.StatusCode.UNAVAILABLE, f"gate {gate} drained"),
                        none_started=True,
                    )
                    return True
            return False
        except (TimeoutError, CallError) as error:
            self._chooser.mark_failed(gate)
            log.info("registration with gate %s failed: %s", gate, error, extra={"gate": gate})
            return False
        finally:
            # Not connected before the calls fail: a call sent again must not find this one.
            self._connected.clear()
            ended = CallError(grpc.StatusCode.UNAVAILABLE, f"the session with gate {gate} ended")
            calls.fail(ended)
            stream.cancel()
            if writer is not None:
                writer.cancel()
                # asyncio.wait: a cancellation of this task must not be taken for the writer's.
                await asyncio.wait({writer}, timeout=CLOSE_TIMEOUT)
            if session is not None:
                await session.end()

    def _log_draining(self, gate: str, reason: str) -> None:
        log.info("gate %s is draining: %s", gate, reason, extra={"gate": gate, "reason": reason})

    async def _register(
        self,
        gate: str,
        stub: gate_pb2_grpc.GateServiceStub,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> bool:
        """One registration with `gate` over Register; calls go as unary RPCs."""
        stream = stub.Register(gate_pb2.RegisterRequest(), metadata=metadata)
        session: _Session | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                first = await stream.read()
            if first is grpc.aio.EOF or first.WhichOneof("event") != "registered":
                raise CallError(grpc.StatusCode.INTERNAL, f"gate {gate} did not register us")
            session = self._registered(gate, stub, first.registered)
            while (event := await stream.read()) is not grpc.aio.EOF:
                kind = event.WhichOneof("event")
                if kind == "messages":
                    await self._messages.put(event.messages.messages)
                elif kind == "draining":
                    self._log_draining(gate, event.draining.reason)
                    return True
            return False
        except (TimeoutError, CallError) as error:
            self._chooser.mark_failed(gate)
            log.info("registration with gate %s failed: %s", gate, error, extra={"gate": gate})
            return False
        finally:
            stream.cancel()
            if session is not None:
                await session.end()

    def _registered(
        self,
        gate: str,
        stub: gate_pb2_grpc.GateServiceStub,
        registered: gate_pb2.Registered,
        calls: CallStream | None = None,
    ) -> _Session:
        previous = self._session
        session = _Session(gate, registered.client_id, registered.credential, stub, calls)
        self._session = session
        self._registrations += 1
        self._last_refusal = self._last_failure = ""
        self._registered_at = asyncio.get_running_loop().time()
        self._state = ClientState.CONNECTED
        self._connected.set()
        log.debug(
            "registered with gate %s as %s",
            gate,
            registered.client_id,
            extra={"gate": gate, "client_id": registered.client_id},
        )
        if previous is not None and self._on_reconnect is not None:
            session.resync = self._reconnected(previous.client_id, registered.client_id)
        return session

    def _reconnected(self, old_id: str, new_id: str) -> asyncio.Task[None] | None:
        """Calls ``on_reconnect``; an async one runs in a task of its own, beside the stream's
        reading: the calls it makes to resynchronise are answered on that stream. A callback
        that fails is logged; the registration goes on."""
        assert self._on_reconnect is not None
        try:
            outcome = self._on_reconnect(old_id, new_id)
        except Exception:
            log.exception("on_reconnect(%s, %s) failed", old_id, new_id)
            return None
        if not inspect.isawaitable(outcome):
            return None
        task = asyncio.get_running_loop().create_task(
            _awaited(outcome), name="goverse-client-on-reconnect"
        )
        task.add_done_callback(_log_failure)
        return task


async def _awaited(outcome: Awaitable[object]) -> None:
    await outcome


def _log_failure(task: asyncio.Task[None]) -> None:
    """Logs what an ``on_reconnect`` callback raised (its cancellation is not a failure)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("on_reconnect failed", exc_info=error)


def _shown(details: str) -> str:
    """`details` cut to :data:`FAILURE_SHOWN_CHARS` characters (an ellipsis when cut)."""
    if len(details) <= FAILURE_SHOWN_CHARS:
        return details
    return details[:FAILURE_SHOWN_CHARS] + "…"
