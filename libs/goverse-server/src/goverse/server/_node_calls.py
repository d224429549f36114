"""NodeCalls: the Calls stream to each node, calls written in batches, replies by id."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import grpc
import structlog

from goverse import wire
from goverse._deadlines import DeadlineWheel, Expired, expire_future
from goverse._tracing import OnceSpan
from goverse.errors import CallError, NotSent, status_error
from goverse.server._batching import CALL_QUEUE_MESSAGES, READ_PACE, gathered_batch
from goverse.server._mailbox import Mailbox
from goverse.server._supervisor import Supervisor, SupervisorClosed
from goverse.server._tracing import call_span
from goverse.transport import ChannelPool
from goverse.v1 import node_pb2, node_pb2_grpc

log = structlog.get_logger(__name__)

TASK_PREFIX = "node-calls:"
"""The supervisor's name of a stream's task: this prefix and the node address."""
BATCH_MAX_ITEMS = 1024
"""Most calls and cancellations one stream message carries."""
CANCEL_BYTES = 10
"""Most bytes one cancelled id takes in ``CallFrames.cancelled`` (a packed varint)."""
FRAMING_BYTES = 16
"""Bytes kept free in a stream message for its fields' tags and lengths."""
WRITER_WAIT = 1.0
"""How long a stream's task waits for its writer to end once cancelled."""
UNARY_RECHECK = 30.0
"""Seconds calls to a node without ``Calls`` (an older version, mid-rollout) go as unary RPCs
before the stream is tried again (the node may have been upgraded by then)."""

_Item = node_pb2.CallFrame | int
"""What the writer sends: a call, or the id of a call to cancel."""
Metadata = Sequence[tuple[str, str | bytes]]


@dataclass
class _Pending:
    """A call waiting for its reply: `written` once handed to the stream."""

    reply: asyncio.Future[node_pb2.ReplyFrame]
    written: bool = False


class NodeCalls:
    """Sends calls to nodes over one ``NodeService.Calls`` stream per node address.

    A gate sends its clients' calls so, a node its objects' calls to objects on other nodes;
    `sender` names the process in errors (``gate g1``, ``node 10.0.0.5:7001``) and `metadata`
    identifies it to the node when a stream opens (``goverse-gate-id`` or
    ``goverse-node-id``).

    :meth:`call` is routing's transport (a :data:`~goverse.server.Send`): the call gets an id
    and a CLIENT span (named as the unary call's, its W3C context in the frame) and is queued
    for the stream's writer, which sends every queued call and cancellation in one stream
    message; the stream's reader resolves calls by the id of their reply. The stream of a
    node opens with the first call to it, as the supervisor's task ``node-calls:<address>``,
    and stays open; once it ends, the next call opens another.

    Failures: when a stream breaks, every call in flight on it fails at once — a call
    already handed to the stream with UNAVAILABLE (its details: the stream's), a call not yet
    written with :class:`~goverse.server.NotSent` (it did not run: routing may send it
    again). A stream the node ends with OK has answered every call it read (a stopping node
    answers its calls still running UNAVAILABLE first), so the calls still pending then fail
    with NotSent too: they were in transit and never ran. A call whose reply does not come
    within its timeout (at most a :data:`~goverse._deadlines.TICK_S` late) fails with
    DEADLINE_EXCEEDED and its cancellation is sent to the node,
    as is that of a call whose caller gave up (cancelled). At most `max_calls` calls are in
    flight per node; one more fails with RESOURCE_EXHAUSTED at once. The calls waiting to be
    written to a node (it is frozen, or slower than its callers) take at most
    :data:`~goverse.server.CALL_QUEUE_MESSAGES` stream messages' worth of bytes: a call that
    would take them over it fails at once with RESOURCE_EXHAUSTED too, never sent.

    A node that answers the stream UNIMPLEMENTED (an older version, during a rolling upgrade)
    gets its calls as the unary RPCs of their ops for :data:`UNARY_RECHECK` seconds: the calls
    pending on that stream never ran, so they fail with NotSent and routing sends them again.
    """

    def __init__(
        self,
        sender: str,
        metadata: Metadata,
        pool: ChannelPool,
        supervisor: Supervisor,
        *,
        max_calls: int,
        max_message_bytes: int,
    ) -> None:
        self._sender = sender
        self._metadata = tuple(metadata)
        self._pool = pool
        self._supervisor = supervisor
        self._max_calls = max_calls
        self._max_bytes = max(max_message_bytes - FRAMING_BYTES, 1)
        self._max_queued_bytes = CALL_QUEUE_MESSAGES * self._max_bytes
        self._streams: dict[str, _CallStream] = {}
        self._unary_until: dict[str, float] = {}
        self._unary_calls: dict[str, int] = {}
        self._deadlines = DeadlineWheel(expire_future)

    @property
    def in_flight(self) -> int:
        """Calls waiting for a reply on every stream (or unary RPC) now."""
        streamed = sum(len(stream.pending) for stream in self._streams.values())
        return streamed + sum(self._unary_calls.values())

    async def call(
        self,
        address: str,
        frame: node_pb2.CallFrame,
        timeout: float,
        unary_metadata: Callable[[], Metadata] | None = None,
    ) -> node_pb2.ReplyFrame:
        """Sends `frame` (its op set; the id, timeout and trace context are set here) to the
        node at `address` and returns its reply within `timeout` seconds; raises what the
        class docstring says, or the :class:`~goverse.errors.CallError` its reply's status
        stands for. What `unary_metadata` makes goes with the call when it is sent as a unary
        RPC (to a node without ``Calls``): what the frame says beyond its op (a node's call
        chain), made only then."""
        if self._unary_until.get(address, 0.0) > time.monotonic():
            return await self._call_unary(address, frame, timeout, unary_metadata)
        stream = self._streams.get(address)
        if stream is None or stream.closed:
            stream = self._open(address)
        return await stream.call(frame, timeout)

    def _open(self, address: str) -> _CallStream:
        stub = node_pb2_grpc.NodeServiceStub(self._pool.get(address))
        stream = _CallStream(self, address, stub)
        try:
            task = self._supervisor.spawn(TASK_PREFIX + address, stream.run())
        except SupervisorClosed:
            raise NotSent(f"{self._sender} is stopping") from None
        # A task cancelled before it ever ran (the service's stop) never reaches the finally
        # of run(): this done callback ends the stream then, so that no call waits on it.
        task.add_done_callback(stream.task_done)
        self._streams[address] = stream
        return stream

    async def _call_unary(
        self,
        address: str,
        frame: node_pb2.CallFrame,
        timeout: float,
        metadata: Callable[[], Metadata] | None,
    ) -> node_pb2.ReplyFrame:
        """Sends `frame` as the unary RPC of its op; a failure is the RPC's own error
        (routing judges it as it judges any node's)."""
        in_flight = self._unary_calls.get(address, 0)
        if in_flight >= self._max_calls:
            raise self._exhausted(address)
        op = frame.WhichOneof("op")
        assert op is not None, "a call frame needs its op"
        rpc = getattr(node_pb2_grpc.NodeServiceStub(self._pool.get(address)), wire.CALL_OPS[op])
        self._unary_calls[address] = in_flight + 1
        try:
            response = await rpc(
                getattr(frame, op),
                timeout=timeout,
                metadata=(*self._metadata, *(metadata() if metadata is not None else ())),
                wait_for_ready=True,
            )
        finally:
            self._unary_calls[address] -= 1
            if not self._unary_calls[address]:
                del self._unary_calls[address]
        reply = node_pb2.ReplyFrame()
        getattr(reply, op).CopyFrom(response)
        return reply

    def _exhausted(self, address: str) -> CallError:
        return CallError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{self._sender} has {self._max_calls} calls in flight to node "
            f"{address} (--max-stream-calls)",
        )

    def _backlogged(self, address: str, queued: int) -> CallError:
        return CallError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"call not sent: {self._sender} has {queued} bytes of calls waiting to be written "
            f"to node {address}, which does not read them fast enough (at most "
            f"{self._max_queued_bytes})",
        )

    def _go_unary(self, address: str) -> None:
        self._unary_until[address] = time.monotonic() + UNARY_RECHECK
        log.info(
            "node has no call stream (an older version?): its calls go unary",
            node=address,
            recheck_s=UNARY_RECHECK,
        )

    def forget(self, address: str) -> None:
        """Drops what is kept for the node at `address` beyond its stream (which ends with
        its channel): the node has left the cluster."""
        self._unary_until.pop(address, None)

    def _forget(self, stream: _CallStream) -> None:
        if self._streams.get(stream.address) is stream:
            del self._streams[stream.address]


@dataclass
class _CallStream:
    """One node's Calls stream: its pending calls by id and its outbox, run by :meth:`run`."""

    owner: NodeCalls
    address: str
    stub: node_pb2_grpc.NodeServiceStub
    pending: dict[int, _Pending] = field(default_factory=dict)
    closed: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _outbox: Mailbox[_Item] = field(init=False)

    def __post_init__(self) -> None:
        # Calls are bounded by max_calls, and so are cancellations (one per pending call);
        # calls by bytes too, in call() (a cancellation is never refused for its bytes).
        self._outbox = Mailbox(self.owner._max_calls * 2)

    async def call(self, frame: node_pb2.CallFrame, timeout: float) -> node_pb2.ReplyFrame:
        owner = self.owner
        if len(self.pending) >= owner._max_calls:
            raise owner._exhausted(self.address)
        call_id = next(self._ids)
        op = frame.WhichOneof("op")
        assert op is not None, "a call frame needs its op"
        span, carrier = call_span(wire.NODE_CALL_METHODS[op])
        frame.id = call_id
        # Bounded before it is multiplied: an object may pass any float (1e306 s: inf ms).
        frame.timeout_ms = max(math.ceil(min(timeout * 1000, wire.MAX_TIMEOUT_MS)), 1)
        frame.trace_context.clear()  # a call sent again gets the context of its new span
        frame.trace_context.update(carrier)
        size = _size_of(frame)
        if size > owner._max_bytes:  # as gRPC refuses a unary request over the limit
            refused = CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"CLIENT: Sent message larger than max ({size} vs. {owner._max_bytes})",
            )
            _end_span(span, refused)
            raise refused
        queued = self._outbox.nbytes
        if queued + size > owner._max_queued_bytes:  # the node does not read: not sent
            refused = owner._backlogged(self.address, queued)
            _end_span(span, refused)
            raise refused
        pending = _Pending(asyncio.get_running_loop().create_future())
        self.pending[call_id] = pending
        # The deadline fails the reply's future rather than the task (asyncio.timeout): the
        # future is all this waits for.
        deadline = owner._deadlines.add(pending.reply, timeout)
        try:
            if not self._outbox.put(frame, size):
                raise NotSent("the call stream has ended")
            reply = await pending.reply
        except Expired:
            self._cancel(call_id, pending)
            span.end_with(grpc.StatusCode.DEADLINE_EXCEEDED)
            raise CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        except BaseException as error:
            if isinstance(error, asyncio.CancelledError):
                self._cancel(call_id, pending)
            _end_span(span, error)
            raise
        finally:
            deadline.discard(pending.reply)
            del self.pending[call_id]
        if reply.WhichOneof("result") == "error":
            failed = status_error(reply.error)
            span.end_with(failed.status_code, f"{failed.status_code.name}: {failed.message}")
            raise failed
        span.end_with(grpc.StatusCode.OK)
        return reply

    def _cancel(self, call_id: int, pending: _Pending) -> None:
        # A call not written yet is skipped by the writer; one written is cancelled on the node.
        if pending.written:
            self._outbox.put(call_id, CANCEL_BYTES)

    async def run(self) -> None:
        """Opens the stream and reads its replies until it ends; owns its writer task. On the
        way out, by any path, fails every call still pending on it."""
        reason = "the call stream ended"
        written: BaseException = CallError(grpc.StatusCode.UNAVAILABLE, reason)
        call = self.stub.Calls(metadata=self.owner._metadata)
        writer = asyncio.get_running_loop().create_task(
            self._write(call), name=f"{TASK_PREFIX}{self.address}:writer"
        )
        ended = True  # by the call itself (not by this task's cancellation)
        try:
            async for replies in call:
                for index, reply in enumerate(replies.replies, 1):
                    if index % READ_PACE == 0:
                        await asyncio.sleep(0)  # the calls answered go on to their callers
                    pending = self.pending.get(reply.id)
                    if pending is not None and not pending.reply.done():
                        pending.reply.set_result(reply)
            # A node ends a stream with OK only once it has answered every call it read: the
            # calls still pending never reached it (they were in transit as it stopped).
            reason = "the node ended the call stream"
            written = NotSent(reason)
        except grpc.aio.AioRpcError as error:
            reason = error.details() or error.code().name
            written = CallError(grpc.StatusCode.UNAVAILABLE, reason)
            if error.code() is grpc.StatusCode.UNIMPLEMENTED:
                # No node ran a call of a stream it does not know: all may be sent again.
                written = NotSent(reason)
                self.owner._go_unary(self.address)
        except asyncio.CancelledError:
            ended = False
            reason = f"{self.owner._sender} is stopping"
            written = CallError(grpc.StatusCode.UNAVAILABLE, reason)
            raise
        finally:
            self.closed = True
            self.owner._forget(self)
            self._outbox.close(reason, discard=True)
            if ended:
                # A write in progress ends at once with the call; let it say whether its
                # calls left. When it failed, grpc may report the node's status as INTERNAL
                # "Internal error from Core" (grpc/grpc#36066): those calls are not sent.
                await asyncio.wait([writer], timeout=WRITER_WAIT)
            self._fail_pending(written, reason)
            writer.cancel()
            call.cancel()
            await asyncio.wait([writer], timeout=WRITER_WAIT)
            if writer.done() and not writer.cancelled():
                writer.exception()  # a write fails only once the call has: the reader saw why
            log.debug("call stream to node ended", node=self.address, reason=reason)

    def task_done(self, task: asyncio.Task[None]) -> None:
        """The done callback of :meth:`run`'s task: ends the stream when :meth:`run` ended
        without its clean-up (cancelled before it ever ran, as the service stopped), as its
        ``finally`` would have: nothing was written, so every call on it fails with NotSent."""
        if self.closed:  # run() cleaned up after itself: the common case
            return
        if task.cancelled() or task.exception() is None:
            reason = f"{self.owner._sender} is stopping"
        else:
            reason = f"the call stream did not open: {task.exception()}"
        self.closed = True
        self.owner._forget(self)
        self._outbox.close(reason, discard=True)
        self._fail_pending(NotSent(reason), reason)

    def _fail_pending(self, written: BaseException, reason: str) -> None:
        for pending in self.pending.values():
            if not pending.reply.done():
                pending.reply.set_exception(written if pending.written else NotSent(reason))

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        """Sends what is queued, as few stream messages as the size limit allows."""
        max_bytes = self.owner._max_bytes
        while (batch := await gathered_batch(self._outbox, BATCH_MAX_ITEMS, max_bytes)) is not None:
            frames = node_pb2.CallFrames()
            for item in batch:
                if isinstance(item, int):
                    frames.cancelled.append(item)
                    continue
                pending = self.pending.get(item.id)
                if pending is None:
                    continue  # its caller gave up before it was written
                pending.written = True
                frames.calls.append(item)
            if frames.calls or frames.cancelled:
                try:
                    await call.write(frames)
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    # The RPC had ended: this message never left, its calls were not sent.
                    for item in frames.calls:
                        if (pending := self.pending.get(item.id)) is not None:
                            pending.written = False
                    raise


def _size_of(frame: node_pb2.CallFrame) -> int:
    size = frame.ByteSize()
    return 1 + max(1, (size.bit_length() + 6) // 7) + size


def _end_span(span: OnceSpan, error: BaseException) -> None:
    if isinstance(error, CallError):
        span.end_with(error.status_code, f"{error.status_code.name}: {error.message}")
    elif isinstance(error, NotSent):
        span.end_with(grpc.StatusCode.UNAVAILABLE, f"UNAVAILABLE: {error}")
    else:
        span.end(error)


__all__ = ["TASK_PREFIX", "Metadata", "NodeCalls"]
