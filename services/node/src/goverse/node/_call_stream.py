"""Call streams: the calls of a gate's or node's Calls stream, each in its own task."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc
import structlog

from goverse import wire
from goverse.errors import GoverseError, InvalidArgument, call_status, code_status
from goverse.node._call_context import caller_of, deadline_after, following
from goverse.node._object_host import ObjectHost
from goverse.server import (
    PLAINTEXT_PEER,
    READ_PACE,
    REPLY_QUEUE_MESSAGES,
    BatchRule,
    CallMetricsInterceptor,
    CallsInFlight,
    DeadlineWheel,
    Mailbox,
    Peer,
    Supervisor,
    SupervisorClosed,
    served_call_span,
)
from goverse.v1 import node_pb2

log = structlog.get_logger(__name__)

READER_TASK_PREFIX = "call-stream:"
"""The supervisor's name of a stream's reader task: this prefix, its sender and a number."""
BATCH_MAX_REPLIES = 1024
"""Most replies one stream message carries (fewer when they would exceed the size limit)."""
CANCEL_WAIT = 1.0
"""How long a stream that ends waits for the calls it cancelled to end."""


class CallStreams:
    """The node's side of every ``Calls`` stream.

    A stream's sender is a gate (its clients' calls; ``goverse-gate-id`` metadata) or another
    node (its objects' calls; ``goverse-node-id``, the frames carrying the call chain); both
    are served alike, "the gate" below standing for either.

    :meth:`serve` is one stream: a reader task (the supervisor's
    ``call-stream:<gate|node> <id>:<n>``)
    reads call frames and starts each call as its own task, so a slow method delays no other
    reply (the loop runs the calls started every :data:`~goverse.server.READ_PACE` calls);
    replies queue in a mailbox that the stream drains, many per stream message
    (:class:`~goverse.server.BatchRule`). Each call runs as its unary RPC would (the same
    host entry point, caller, validation and errors; its ``timeout_ms`` as the deadline
    :func:`~goverse.node._call_context.remaining` reads; a SERVER span named as the unary
    one, the child of the gate's span; the same duration histogram with the same ``rpc``
    label), and counts in the service's calls in flight, which a stop lets finish.

    Bounds: at most `max_calls` calls per stream hold a slot, from the frame's arrival until
    the stream has taken their reply out of the mailbox; a call past the bound answers
    RESOURCE_EXHAUSTED at once. The replies waiting in the mailbox take at most
    :data:`~goverse.server.REPLY_QUEUE_MESSAGES` stream messages' worth of bytes, beside
    statuses (each under 1.1 KB): a call's result that would take them over it is replaced
    by RESOURCE_EXHAUSTED (the call ran; its result is dropped), and while they are over it a
    new call answers RESOURCE_EXHAUSTED at once, not run. So what a gate that stops reading
    makes the node hold is bounded in bytes, not only by count. Those immediate answers take
    no slot, and at most `max_calls` of them wait: a gate that keeps sending without reading
    past that has its stream ended (RESOURCE_EXHAUSTED, ``slow consumer``). The mailbox holds
    twice `max_calls`, so the reply of a call holding a slot always has room in it: every
    call read is answered, or its stream ends (and the gate fails the call at once), never
    a reply dropped while the gate waits for it until its deadline.

    The stream ends with OK once the gate has half-closed it and every call on it has been
    answered. A cancelled frame id cancels that call (no reply). The node's stop (the
    supervisor's shutdown cancels the reader) cancels the calls still running, answers each
    UNAVAILABLE and ends the stream with OK (close reason ``shutdown``): a stream that ends
    with OK has answered every call it read, so the gate may send a call still unanswered
    again (:class:`~goverse.server.NotSent`). A gate that goes away cancels every call still
    running on its stream; one that does not read its replies gets RESOURCE_EXHAUSTED.
    """

    def __init__(
        self,
        supervisor: Supervisor,
        node: str,
        host: ObjectHost,
        calls: CallsInFlight,
        metrics: CallMetricsInterceptor,
        *,
        max_calls: int,
        max_message_bytes: int,
    ) -> None:
        self._supervisor = supervisor
        self._node = node
        self._host = host
        self._calls = calls
        self._metrics = metrics
        self._max_calls = max_calls
        self._batching = BatchRule(
            node_pb2.ReplyFrames,
            "replies",
            max_message_bytes=max_message_bytes,
            max_items=BATCH_MAX_REPLIES,
        )
        self._max_reply_bytes = REPLY_QUEUE_MESSAGES * self._batching.max_bytes
        self._numbers = itertools.count(1)
        self._streams: set[_CallStream] = set()
        self._ended = asyncio.Event()
        self._deadlines: DeadlineWheel[asyncio.Task[Any]] = DeadlineWheel(_cancel)

    async def wait_ended(self, timeout: float) -> int:
        """Waits up to `timeout` seconds for every stream to have sent its last replies and
        ended (the server's stop would cut off one still flushing); returns how many are
        left."""
        loop = asyncio.get_running_loop()
        until = loop.time() + timeout
        while self._streams and loop.time() < until:
            self._ended.clear()
            try:
                async with asyncio.timeout(until - loop.time()):
                    await self._ended.wait()
            except TimeoutError:
                break
        return len(self._streams)

    @property
    def in_flight(self) -> int:
        """Calls holding a slot on all streams now."""
        return sum(stream.held for stream in self._streams)

    async def serve(
        self,
        frames: AsyncIterator[node_pb2.CallFrames],
        context: grpc.aio.ServicerContext,
        peer: Peer = PLAINTEXT_PEER,
    ) -> AsyncGenerator[node_pb2.ReplyFrames, None]:
        """Serves one Calls stream from `peer`: yields its reply batches until it ends (see
        the class)."""
        sender = _sender_of(context.invocation_metadata())
        stream = _CallStream(self, sender, peer)
        name = f"{READER_TASK_PREFIX}{sender}:{next(self._numbers)}"
        try:
            reader = self._supervisor.spawn(name, stream.read(frames))
        except SupervisorClosed:
            # Ended with OK before reading anything: the gate may send its calls again.
            context.set_trailing_metadata(wire.close_metadata(wire.CloseReason.SHUTDOWN))
            return
        # A stream the gate cancels (or whose connection dies) may just look half-closed to
        # the reader, and the handler may wait on an empty mailbox: the end of the RPC itself
        # is what cancels the calls still running.
        context.add_done_callback(lambda _: stream.abandon(reader))
        self._streams.add(stream)
        try:
            while (batch := await self._batching.gathered_batch(stream.replies)) is not None:
                stream.taken(batch)
                yield node_pb2.ReplyFrames(replies=[reply for reply, _ in batch])
            if stream.failure is not None:
                await context.abort(*stream.failure)
            if stream.stopping:
                context.set_trailing_metadata(wire.close_metadata(wire.CloseReason.SHUTDOWN))
        finally:
            self._streams.discard(stream)
            self._ended.set()
            stream.abandon(reader)
            # The reader cancels and awaits its calls on the way out; bounded all the same.
            await asyncio.wait([reader], timeout=CANCEL_WAIT * 2)
            await stream.settle()
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                log.warning("call stream failed", sender=sender, error=str(reader.exception()))

    def sendable(self, reply: node_pb2.ReplyFrame) -> node_pb2.ReplyFrame:
        """`reply`, or, when it could not fit a stream message, the RESOURCE_EXHAUSTED a unary
        call's too large answer gets from gRPC: one oversized answer must not end the stream
        of every other call."""
        size = self._batching.size_of(reply)
        if self._batching.fits(size):
            return reply
        message = f"SERVER: Sent message larger than max ({size} vs. {self._batching.max_bytes})"
        return node_pb2.ReplyFrame(
            id=reply.id, error=code_status(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
        )

    # -- one call -------------------------------------------------------------------------

    async def run(
        self, frame: node_pb2.CallFrame, received: float, peer: Peer = PLAINTEXT_PEER
    ) -> node_pb2.ReplyFrame:
        """Runs one call of a frame `peer` sent, read at `received` (``time.monotonic``), and
        returns its reply, as its unary RPC would have answered."""
        op = frame.WhichOneof("op")
        if op is None:
            return node_pb2.ReplyFrame(
                id=frame.id,
                error=code_status(grpc.StatusCode.INVALID_ARGUMENT, f"call {frame.id} has no op"),
            )
        request = getattr(frame, op)
        rpc = wire.CALL_OPS[op]
        started = time.perf_counter()
        code = grpc.StatusCode.CANCELLED
        try:
            with served_call_span(wire.NODE_CALL_METHODS[op], frame.trace_context) as span:
                reply, code, details = await self._execute(frame, op, request, received, peer)
                span.end_with(code, f"{code.name}: {details}" if details else "")
            return reply
        finally:
            self._metrics.record(rpc, request, code, time.perf_counter() - started)

    async def _execute(
        self, frame: node_pb2.CallFrame, op: str, request: Any, received: float, peer: Peer
    ) -> tuple[node_pb2.ReplyFrame, grpc.StatusCode, str]:
        timeout = None
        if frame.timeout_ms:
            timeout = frame.timeout_ms / 1000 - (time.monotonic() - received)
            if timeout <= 0:  # expired before it started: not run
                return _deadline_exceeded(frame.id)
        task = asyncio.current_task()
        deadline = None if timeout is None or task is None else self._deadlines.add(task, timeout)
        expired = False
        try:
            try:
                with deadline_after(timeout), following(frame.chain):
                    reply = await self._dispatch(frame.id, op, request, peer)
            finally:
                if deadline is not None and task is not None:
                    deadline.discard(task)
                    if deadline.fired:  # the wheel cancelled the task: take that back
                        expired = task.uncancel() == 0  # and nothing else cancelled it
        except asyncio.CancelledError:
            if expired:  # asyncio.timeout's rule
                return _deadline_exceeded(frame.id)
            raise
        except GoverseError as error:
            return node_pb2.ReplyFrame(id=frame.id, error=call_status(error)), error.status_code, ""
        except Exception as error:  # what grpc answers a unary handler that raised this
            log.exception("call failed", rpc=wire.CALL_OPS[op])
            message = f"Unexpected {type(error)}: {error}"
            return (
                node_pb2.ReplyFrame(
                    id=frame.id, error=code_status(grpc.StatusCode.UNKNOWN, message)
                ),
                grpc.StatusCode.UNKNOWN,
                message,
            )
        return reply, grpc.StatusCode.OK, ""

    async def _dispatch(
        self, call_id: int, op: str, request: Any, peer: Peer
    ) -> node_pb2.ReplyFrame:
        host = self._host
        if op == "call":
            response = await host.invoke(
                request.object_type,
                request.object_id,
                request.method,
                request.request,
                caller_of(request.caller, peer),
            )
            reply = node_pb2.ReplyFrame(id=call_id)
            reply.call.response.CopyFrom(response)  # in place: one copy, not two
            return reply
        if op == "create":
            created = await host.create(request.object_type, request.object_id)
            return node_pb2.ReplyFrame(
                id=call_id, create=node_pb2.NodeCreateObjectResponse(created=created)
            )
        deleted = await host.delete(request.object_type, request.object_id)
        return node_pb2.ReplyFrame(
            id=call_id, delete=node_pb2.NodeDeleteObjectResponse(deleted=deleted)
        )


def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel("the call's deadline passed")


def _sender_of(metadata: Any) -> str:
    """Who opened a Calls stream, from its metadata: ``node <address>`` or ``gate <id>``."""
    node = wire.metadata_value(metadata, wire.NODE_ID_KEY)
    if node:
        return f"node {node}"
    return f"gate {wire.metadata_value(metadata, wire.GATE_ID_KEY) or '?'}"


def _deadline_exceeded(call_id: int) -> tuple[node_pb2.ReplyFrame, grpc.StatusCode, str]:
    # "Deadline Exceeded" is what grpc says of a unary call whose deadline passed.
    status = code_status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    return (
        node_pb2.ReplyFrame(id=call_id, error=status),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        status.message,
    )


_Queued = tuple[node_pb2.ReplyFrame, bool]
"""A reply in the mailbox, and whether its call holds a slot until the reply is taken."""


class _CallStream:
    """One Calls stream's state: its calls by id (each removes itself when it ends), the
    reply mailbox, and how many slots are held."""

    def __init__(self, owner: CallStreams, sender: str, peer: Peer) -> None:
        self._owner = owner
        self.sender = sender
        self.peer = peer
        self.replies: Mailbox[_Queued] = Mailbox(owner._max_calls * 2)
        self.held = 0
        self._answers = 0
        """Replies in the mailbox that hold no slot (answered at once): at most max_calls,
        so that with those of the calls holding a slot (at most max_calls) they never fill
        the mailbox, which holds twice that."""
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._reading = True
        self._abandoned = False
        self._stopping = False
        self.failure: tuple[grpc.StatusCode, str] | None = None
        """The status the stream ends with instead of OK (its calls' replies were dropped)."""

    async def read(self, frames: AsyncIterator[node_pb2.CallFrames]) -> None:
        """Reads frames until the gate half-closes the stream; owns the call tasks.

        Cancelled by the node's stop, it cancels its calls, each answered UNAVAILABLE ("node
        … is stopping"), and the stream ends with OK once they are sent: every call the node
        read is answered, so a call still unanswered when the stream ends with OK was never
        read, and the gate may send it again. A gate that does not read its replies (as many
        answers as it may have in flight wait for it, unread) ends the stream with
        RESOURCE_EXHAUSTED; a gate gone (:meth:`abandon`) drops the replies of the calls it
        cancels.
        """
        ended = False
        try:
            async for message in frames:
                received = time.monotonic()
                for call_id in message.cancelled:
                    task = self._tasks.get(call_id)
                    if task is not None:
                        self._cancel(call_id, task)
                for index, frame in enumerate(message.calls, 1):
                    if index % READ_PACE == 0:
                        await asyncio.sleep(0)  # the calls started run, their replies go out
                    if not self._start(frame, received):
                        if not self._abandoned:
                            self.failure = (
                                grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"slow consumer: {self.sender} does not read its replies",
                            )
                        return
            ended = True
        except asyncio.CancelledError:
            if not self._abandoned:
                self._stopping = True  # the node stops: answer what runs, then end with OK
            raise
        except Exception as error:
            self.failure = (grpc.StatusCode.INTERNAL, f"call stream failed: {error}")
            raise
        finally:
            self._reading = False
            if ended:
                self._close_when_idle()
            else:
                await self._cancel_all()
                self.replies.close("stream ended", discard=not self._stopping)

    def _start(self, frame: node_pb2.CallFrame, received: float) -> bool:
        """Starts the call of `frame`, or answers it at once; False when it cannot be answered
        (the gate does not read its replies, or the stream has ended): the stream ends."""
        owner = self._owner
        if self._abandoned:
            return False
        if frame.id == 0 or frame.id in self._tasks:
            what = "0" if frame.id == 0 else f"{frame.id}, already in flight,"
            problem = InvalidArgument(f"call id {what} is not valid on this stream")
            return self._answer(node_pb2.ReplyFrame(id=frame.id, error=call_status(problem)))
        if self.held >= owner._max_calls:
            return self._answer(
                node_pb2.ReplyFrame(
                    id=frame.id,
                    error=code_status(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"node {owner._node} has {owner._max_calls} calls in flight from "
                        f"{self.sender} (--max-stream-calls)",
                    ),
                )
            )
        if self.replies.nbytes >= owner._max_reply_bytes:
            return self._answer(
                node_pb2.ReplyFrame(
                    id=frame.id,
                    error=code_status(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"call not run: {self._backlog()}",
                    ),
                )
            )
        self.held += 1
        task = asyncio.get_running_loop().create_task(
            self._call(frame, received), name=f"call:{self.sender}:{frame.id}"
        )
        self._tasks[frame.id] = task
        owner._calls.track(task)
        return True

    def _cancel(self, call_id: int, task: asyncio.Task[None]) -> None:
        """Cancels the call `call_id` the gate gave up on. A task cancelled before it ever
        ran (its frame and the cancellation read in one turn) never reaches the finally of
        :meth:`_call`: what it holds (its slot, its entry) is freed here then. Checked here,
        not by a done callback per call, which would cost every call a turn of the loop."""
        task.cancel()
        coro = task.get_coro()
        if inspect.iscoroutine(coro) and inspect.getcoroutinestate(coro) == inspect.CORO_CREATED:
            del self._tasks[call_id]
            self._release(1)
            self._close_when_idle()

    async def _call(self, frame: node_pb2.CallFrame, received: float) -> None:
        reply = None
        try:
            reply = await self._owner.run(frame, received, self.peer)
        except asyncio.CancelledError:
            if self._stopping:  # answered: the gate must not send again what may have run
                reply = node_pb2.ReplyFrame(
                    id=frame.id,
                    error=code_status(
                        grpc.StatusCode.UNAVAILABLE, f"node {self._owner._node} is stopping"
                    ),
                )
            raise
        finally:
            self._tasks.pop(frame.id, None)
            # No reply (cancelled: the caller gave up, or the stream ended), or nobody left to
            # take it (the mailbox always has room for a held reply: it refuses one only once
            # it is closed): the slot is free now rather than when the stream takes the reply.
            if reply is None or not self.replies.put(*self._queueable(reply)):
                self._release(1)
            self._close_when_idle()

    def _queueable(self, reply: node_pb2.ReplyFrame) -> tuple[_Queued, int]:
        """`reply` as the mailbox takes it, with its size: made :meth:`CallStreams.sendable`,
        and its result replaced by RESOURCE_EXHAUSTED when it would take the replies waiting
        over their bytes bound (a status always fits: at most 1024 characters)."""
        owner = self._owner
        reply = owner.sendable(reply)
        size = owner._batching.size_of(reply)
        waiting = self.replies.nbytes
        if (
            waiting
            and waiting + size > owner._max_reply_bytes
            and reply.WhichOneof("result") != "error"
        ):
            message = f"the call ran, but its reply ({size} bytes) was dropped: {self._backlog()}"
            reply = node_pb2.ReplyFrame(
                id=reply.id, error=code_status(grpc.StatusCode.RESOURCE_EXHAUSTED, message)
            )
            size = owner._batching.size_of(reply)
        return (reply, True), size

    def _backlog(self) -> str:
        return (
            f"node {self._owner._node} has {self.replies.nbytes} bytes of replies waiting for "
            f"{self.sender}, which does not read them fast enough (at most "
            f"{self._owner._max_reply_bytes})"
        )

    def _answer(self, reply: node_pb2.ReplyFrame) -> bool:
        """Queues `reply`, which holds no slot; False (the stream must end) when `max_calls`
        such replies wait already: the rest of the mailbox is kept for held replies."""
        if self._answers >= self._owner._max_calls:
            return False
        if not self.replies.put((reply, False), self._owner._batching.size_of(reply)):
            return False
        self._answers += 1
        return True

    def taken(self, batch: list[_Queued]) -> None:
        """The stream took `batch` out of the mailbox: their slots are free."""
        holding = sum(held for _, held in batch)
        self._release(holding)
        self._answers -= len(batch) - holding

    def _release(self, count: int) -> None:
        self.held -= count

    @property
    def stopping(self) -> bool:
        """The node's stop ended the stream (its calls were answered UNAVAILABLE)."""
        return self._stopping

    def abandon(self, reader: asyncio.Task[None]) -> None:
        """The stream has ended (or is ending) without its calls: cancels the reader and
        every call still running, and drops their replies. Idempotent."""
        self._abandoned = True
        reader.cancel()
        for task in self._tasks.values():
            task.cancel()
        self.replies.close("stream ended", discard=True)

    async def settle(self) -> None:
        """Waits, bounded, for the calls cancelled by :meth:`abandon` to end."""
        await self._cancel_all()

    def _close_when_idle(self) -> None:
        # Half-closed by the gate and every call answered: the stream ends once flushed.
        if not self._reading and not self._tasks:
            self.replies.close("half-closed")

    async def _cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CANCEL_WAIT)
            if any(not task.done() for task in tasks):
                log.warning("calls still running after their stream ended", sender=self.sender)


__all__ = ["READER_TASK_PREFIX", "CallStreams"]
