"""ClientSession: one client's Session stream on the gate: its calls, their replies, its pushes."""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog

from goverse import wire
from goverse.errors import GoverseError, call_status, code_status
from goverse.gate._auth import caller_fields, mark_principal
from goverse.gate._client_proxy import TOKEN_EXPIRED_DETAILS, ClientProxy
from goverse.gate._router import Router
from goverse.server import (
    READ_PACE,
    REPLY_QUEUE_MESSAGES,
    BatchRule,
    CallMetricsInterceptor,
    CallsInFlight,
    log_context,
    served_call_span,
)
from goverse.v1 import gate_pb2

log = structlog.get_logger(__name__)

CANCEL_TIMEOUT = 1.0
"""How long the end of a session waits for the call tasks and the reader it cancelled; a
bound, so that a task that ignores its cancellation cannot hold the stream's handler."""


class ClientSession:
    """The gate's side of one client's Session stream: the registered client `proxy` (its
    identity, pushes and draining, as for a Register stream) and the calls the client sends.

    :meth:`stream` is what the handler yields. It sends ``Registered``, then starts the
    *reader* (a task it owns) and becomes the *writer*:

    - The reader takes the client's frames. Each call of a frame starts as its own task (a slow
      call never delays another; the loop runs the tasks started every
      :data:`~goverse.server.READ_PACE` calls), routed by `router` exactly as the unary RPC of
      the same name, with the client id of this session; an id in ``cancelled`` cancels its task
      (the call then gets no reply: its caller gave up). A call is refused at once, with the
      status its unary RPC would answer, when it has no op (INVALID_ARGUMENT), reuses the id of
      a call in flight (INVALID_ARGUMENT), when `max_calls` calls are in flight already
      (RESOURCE_EXHAUSTED), or once the gate drains (UNAVAILABLE, marked ``not_forwarded``: the
      client sends it to its next gate). A call's ``timeout_ms`` is counted from when its frame
      was read: spent before the call starts, it answers DEADLINE_EXCEEDED without being
      started.
    - The writer sends what is ready, replies first, then pushes, each batch in one stream
      message cut to the size limit (:class:`~goverse.server.BatchRule`).

    Memory stays bounded when the client stops reading: pushes by the proxy's queue; replies
    because a call counts against `max_calls` until its reply is taken by the writer, and
    because the replies waiting take at most :data:`~goverse.server.REPLY_QUEUE_MESSAGES`
    stream messages' worth of bytes, beside statuses (each under 1.1 KB): a call's result
    that would take them over it is replaced by RESOURCE_EXHAUSTED (the call ran; its result
    is dropped). The reader stops reading frames (so gRPC flow control holds the client back)
    while `max_calls` replies, or that many bytes of them, wait to be sent.

    The stream ends when the proxy is closed: after a draining close (the gate stops), once
    pushes are flushed and every call in flight has answered and its reply was sent, with
    ``Draining`` (while it waits for them, its task counts in `calls`, the gate's calls in
    flight, which the stop waits for as for unary calls); after a slow-consumer close with
    :class:`StreamEnd`; when the client ends its request stream (half-closes), once every
    call in flight has answered and its reply was sent (as the node's ``Calls`` stream
    does), or, when the gate drains meanwhile, as a draining close does. Whichever way it ends
    (cancellation included), the reader and every call still in flight are cancelled and
    awaited for up to :data:`CANCEL_TIMEOUT`.
    """

    def __init__(
        self,
        proxy: ClientProxy,
        router: Router,
        *,
        max_calls: int,
        max_message_bytes: int,
        metrics: CallMetricsInterceptor | None = None,
        calls: CallsInFlight | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._proxy = proxy
        self._in_flight = calls
        self._router = router
        self._max_calls = max_calls
        self._metrics = metrics
        self._clock = clock or asyncio.get_running_loop().time
        self._batching = BatchRule(
            gate_pb2.SessionResponse,
            "replies.replies",
            max_message_bytes=max_message_bytes,
            max_items=max_calls,
        )
        self._calls: dict[int, asyncio.Task[None]] = {}
        self._replies: collections.deque[tuple[gate_pb2.CallReply, int]] = collections.deque()
        self._reply_bytes = 0
        """What the replies waiting to be sent take (their sizes in ``_replies``)."""
        self._max_reply_bytes = REPLY_QUEUE_MESSAGES * self._batching.max_bytes
        self._room = asyncio.Event()
        self._changed = asyncio.Event()
        """Set when a reply is queued or a call ends: what a draining writer waits for."""
        self._reader: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        """Calls running, and answered calls whose reply was not sent yet."""
        return len(self._calls) + len(self._replies)

    async def stream(
        self, gate_id: str, requests: AsyncIterator[gate_pb2.SessionRequest]
    ) -> AsyncGenerator[gate_pb2.SessionResponse, None]:
        """The events of the Session stream whose client frames `requests` yields."""
        proxy = self._proxy
        self._reader = asyncio.get_running_loop().create_task(
            self._read(requests), name=f"session-reader:{proxy.client_id}"
        )
        try:
            yield gate_pb2.SessionResponse(registered=proxy.registered(gate_id))
            while True:
                if self._replies:
                    yield gate_pb2.SessionResponse(
                        replies=gate_pb2.CallReplies(replies=self._take_replies())
                    )
                    continue
                pushes = proxy.take_batch()
                if pushes:
                    yield proxy.messages.session(pushes)
                    continue
                if pushes is None:  # closed, and what a draining close kept is flushed
                    if proxy.draining and self._calls:
                        # Calls in flight finish as unary calls do on a drain, their replies
                        # sent as they come; the stop's budget bounds this (it cancels this
                        # handler when spent). Counted with the gate's calls in flight from
                        # now until the stream has ended, so that the stop waits for them
                        # and their replies as for unary calls, not only its streams' share.
                        task = asyncio.current_task()
                        if self._in_flight is not None and task is not None:
                            self._in_flight.track(task)
                        self._changed.clear()
                        await self._changed.wait()
                        continue
                    last = proxy.last_event()  # raises StreamEnd for a slow consumer
                    if last is not None:
                        yield gate_pb2.SessionResponse(draining=last)
                    return
                await proxy.wait()
        finally:
            await self._cancel_all()

    # -- the reader ------------------------------------------------------------------------

    async def _read(self, requests: AsyncIterator[gate_pb2.SessionRequest]) -> None:
        """Starts the calls of each frame and cancels the ids it names, until the client ends
        its request stream (half-closes); then waits for the calls in flight to answer, as
        gRPC's half-close ends the requests, not the RPC, and closes the proxy, which ends the
        writer once their replies are sent. A proxy closed by a drain is left as it is: the
        writer sends the pushes it holds and the replies, then ``Draining``, as for any client
        of a draining gate."""
        try:
            async for request in requests:
                received = self._clock()
                for index, call in enumerate(request.calls, 1):
                    self._start(call, received)
                    if index % READ_PACE == 0:
                        await asyncio.sleep(0)  # the calls started go on to their nodes
                    # The writer takes replies as fast as the client reads them: when it
                    # stops reading, stop reading its frames too.
                    while (
                        len(self._replies) >= self._max_calls
                        or self._reply_bytes >= self._max_reply_bytes
                    ):
                        self._room.clear()
                        await self._room.wait()
                for call_id in request.cancelled:
                    task = self._calls.get(call_id)
                    if task is not None:
                        task.cancel("cancelled by the client")
            log.debug("client ended its requests", calls_in_flight=len(self._calls))
            while self._calls:  # each ends by its deadline at the latest
                self._changed.clear()
                await self._changed.wait()
        except grpc.aio.AioRpcError as error:  # the stream broke under the reader
            log.debug("session stream broke", code=error.code().name)
        except Exception:  # nobody awaits the reader's result: say it here
            log.exception("session reader failed")
        finally:
            # A drain ends the writer by itself, once it has sent what the proxy holds and
            # the replies of the calls in flight; closing the proxy as ended here would
            # discard those pushes, which the drain promises to deliver.
            if not self._proxy.draining:
                self._proxy.close("the client ended its session")

    def _start(self, call: gate_pb2.SessionCall, received: float) -> None:
        op = call.WhichOneof("op")
        if self._proxy.closed:
            self._reply(
                gate_pb2.CallReply(
                    id=call.id,
                    error=code_status(grpc.StatusCode.UNAVAILABLE, _refused_closed(self._proxy)),
                    not_forwarded=True,
                )
            )
        elif op is None:
            self._refuse(
                call.id,
                grpc.StatusCode.INVALID_ARGUMENT,
                "the call has none of call, create, delete",
            )
        elif call.id in self._calls:
            self._refuse(
                call.id,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"call id {call.id} is already in flight on this session",
            )
        elif self.in_flight >= self._max_calls:
            self._refuse(
                call.id,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this session has its maximum of {self._max_calls} calls in flight "
                "(--max-session-calls); wait for replies before sending more",
            )
        else:
            deadline = received + call.timeout_ms / 1000 if call.timeout_ms else None
            task = asyncio.get_running_loop().create_task(
                self._run(call, op, deadline), name=f"session-call:{call.id}"
            )
            self._calls[call.id] = task
            # A done callback, not the task's finally: a task cancelled before it ever ran
            # never reaches its finally.
            task.add_done_callback(functools.partial(self._forget, call.id))

    def _forget(self, call_id: int, task: asyncio.Task[None]) -> None:
        if self._calls.get(call_id) is task:
            del self._calls[call_id]
            self._changed.set()

    def _refuse(self, call_id: int, code: grpc.StatusCode, message: str) -> None:
        self._reply(gate_pb2.CallReply(id=call_id, error=code_status(code, message)))

    # -- one call --------------------------------------------------------------------------

    async def _run(self, call: gate_pb2.SessionCall, op: str, deadline: float | None) -> None:
        request: Any = getattr(call, op)
        reply = gate_pb2.CallReply(id=call.id)
        code = grpc.StatusCode.OK
        started = self._clock()
        try:
            with (
                served_call_span(wire.GATE_CALL_METHODS[op], call.trace_context) as span,
                log_context(
                    **caller_fields(self._proxy.caller),
                    object_type=request.object_type,
                    object_id=request.object_id[:256],
                ),
            ):
                mark_principal(self._proxy.caller)
                try:
                    result = await self._route(op, request, deadline)
                    # A call's result is its response, a create's or delete's their message.
                    (reply.call.response if op == "call" else getattr(reply, op)).CopyFrom(result)
                except GoverseError as error:
                    code = error.status_code
                    reply.error.CopyFrom(call_status(error))
                except Exception:
                    # What the gRPC server answers for an unexpected error of a unary handler.
                    log.exception("session call failed")
                    code = grpc.StatusCode.UNKNOWN
                    reply.error.CopyFrom(code_status(code, "Unexpected error in the gate"))
                span.end_with(
                    code, f"{code.name}: {reply.error.message}" if reply.HasField("error") else ""
                )
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if self._metrics is not None:
                self._metrics.record(wire.CALL_OPS[op], request, code, self._clock() - started)
        self._reply(reply)

    def _route(self, op: str, request: Any, deadline: float | None) -> Awaitable[Any]:
        remaining = None
        if deadline is not None:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise _NotStarted()
        caller = self._proxy.caller
        if op == "call":
            return self._router.call_object(caller, request, remaining)
        if op == "create":
            return self._router.create_object(caller, request, remaining)
        return self._router.delete_object(caller, request, remaining)

    # -- replies ---------------------------------------------------------------------------

    def _reply(self, reply: gate_pb2.CallReply) -> None:
        size = self._batching.size_of(reply)
        if not self._batching.fits(size):
            # A unary reply over the limit fails the same way on the gRPC server.
            reply = gate_pb2.CallReply(
                id=reply.id,
                error=code_status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"SERVER: Sent message larger than max ({size} vs. "
                    f"{self._batching.max_bytes}): the gate's --max-message-bytes",
                ),
            )
            size = self._batching.size_of(reply)
        waiting = self._reply_bytes
        if (
            waiting
            and waiting + size > self._max_reply_bytes
            and reply.WhichOneof("result") != "error"
        ):
            # A status always fits (at most 1024 characters): the bound holds for results.
            reply = gate_pb2.CallReply(
                id=reply.id,
                error=code_status(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the call ran, but its reply ({size} bytes) was dropped: {waiting} bytes "
                    "of replies wait for this session's client, which does not read them fast "
                    f"enough (at most {self._max_reply_bytes})",
                ),
            )
            size = self._batching.size_of(reply)
        self._replies.append((reply, size))
        self._reply_bytes += size
        self._changed.set()
        self._proxy.wake()

    def _take_replies(self) -> list[gate_pb2.CallReply]:
        batch: list[gate_pb2.CallReply] = []
        taken = 0
        while self._replies and len(batch) < self._batching.max_items:
            reply, size = self._replies[0]
            if batch and taken + size > self._batching.max_bytes:
                break
            self._replies.popleft()
            self._reply_bytes -= size
            taken += size
            batch.append(reply)
        self._room.set()
        return batch

    # -- the end ---------------------------------------------------------------------------

    async def _cancel_all(self) -> None:
        tasks = list(self._calls.values())
        if self._reader is not None:
            tasks.append(self._reader)
        for task in tasks:
            task.cancel("the session ended")
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=CANCEL_TIMEOUT)
        if pending:
            log.warning(
                "session tasks still pending after their cancellation",
                tasks=sorted(task.get_name() for task in pending),
                timeout_s=CANCEL_TIMEOUT,
            )


class _NotStarted(GoverseError):
    """A call whose deadline passed before it started."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self) -> None:
        super().__init__("the call's deadline passed before the gate could start it")


def _refused_closed(proxy: ClientProxy) -> str:
    if proxy.draining:
        return f"the gate is shutting down ({proxy.close_reason}); call another gate"
    if proxy.token_expired:
        return TOKEN_EXPIRED_DETAILS
    return "this session has ended"


__all__ = ["CANCEL_TIMEOUT", "ClientSession"]
