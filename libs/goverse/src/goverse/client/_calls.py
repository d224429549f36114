"""CallStream: the SDK's calls in flight on one Session stream, their writer and their replies."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc

from goverse import wire
from goverse._deadlines import DeadlineWheel, Expired, expire_future
from goverse.errors import CallError, NotSent, status_error
from goverse.v1 import gate_pb2

log = logging.getLogger(__name__)


FRAME_RESERVE = 64 * 1024
"""Bytes of a SessionRequest kept for its cancellations and framing."""
MAX_CANCELS = 4096
"""Most cancelled ids in one SessionRequest (at most 10 bytes each: within the reserve)."""


class CallStream:
    """The calls of one registration made over its Session stream `call`.

    :meth:`call` puts a call in the pending table (id → future) and the outbox; one writer task
    (:meth:`run_writer`, owned by the registration) writes everything in the outbox as one
    ``SessionRequest`` whenever it is woken, so calls made together travel together. The
    registration's reader hands each reply to :meth:`resolve`, which completes the call of its
    id.

    A call whose time runs out (DEADLINE_EXCEEDED) or whose caller is cancelled leaves the
    table at once and, if it was written already, its id goes out as a cancellation so the
    gate (and node) stop working on it; if it was not written, it is simply never written.

    :meth:`fail` ends the stream's calls when it breaks or ends: a call in the outbox fails
    with :class:`NotSent` (its caller may send it on the next session); a call written already
    fails at once with `error` (UNAVAILABLE): it may have run, so it is not sent again.
    """

    def __init__(self, call: grpc.aio.StreamStreamCall[Any, Any], max_message_bytes: int) -> None:
        self._call = call
        # Each call takes its size, a tag and a length varint in the frame; the frame's own
        # cancellations get a reserve.
        self._max_bytes = _calls_bytes(max_message_bytes)
        self._max_message_bytes = max_message_bytes
        self._pending: dict[int, asyncio.Future[gate_pb2.CallReply]] = {}
        self._outbox: dict[int, tuple[gate_pb2.SessionCall, int]] = {}
        self._cancelled: list[int] = []
        self._wake = asyncio.Event()
        self._next_id = 1
        self._failed: BaseException | None = None
        self._deadlines: DeadlineWheel[asyncio.Future[gate_pb2.CallReply]] = DeadlineWheel(
            expire_future
        )

    def limit(self, max_message_bytes: int) -> None:
        """Lowers the frame size limit to what the gate receives (its ``Registered`` says)."""
        if max_message_bytes < self._max_message_bytes:
            self._max_message_bytes = max_message_bytes
            self._max_bytes = _calls_bytes(max_message_bytes)

    def __len__(self) -> int:
        """Calls waiting for their reply."""
        return len(self._pending)

    async def call(
        self,
        session_call: gate_pb2.SessionCall,
        timeout: float,
        trace_context: dict[str, str],
    ) -> Any:
        """Sends `session_call` (its op set: ``call``, ``create`` or ``delete``; its id,
        timeout and trace context are set here, so each call in flight needs its own) and
        returns the reply's result for that op, within `timeout` seconds.

        Raises :class:`CallError` with the status the gate answered, DEADLINE_EXCEEDED when
        `timeout` passes first, UNAVAILABLE when the stream breaks after the call was written,
        and :class:`NotSent` when it breaks before.
        """
        if self._failed is not None:
            raise NotSent() from self._failed
        op = session_call.WhichOneof("op")
        assert op is not None, "a session call needs its op"
        call_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[gate_pb2.CallReply] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        session_call.id = call_id
        session_call.timeout_ms = min(max(int(timeout * 1000), 1), wire.MAX_TIMEOUT_MS)
        session_call.trace_context.clear()  # a call sent again carries its new span's
        session_call.trace_context.update(trace_context)
        size = session_call.ByteSize()
        size += 1 + (size.bit_length() + 6) // 7  # its tag and length varint in the frame
        if size > self._max_bytes:
            del self._pending[call_id]
            # Worded as gRPC words the unary call's refusal.
            raise CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"CLIENT: Sent message larger than max ({size} vs. {self._max_bytes}): the "
                f"gate receives messages of at most {self._max_message_bytes} bytes",
            )
        self._outbox[call_id] = (session_call, size)
        self._wake.set()
        # The deadline fails the future (asyncio.timeout would cancel the task): the future is
        # all this waits for.
        deadline = self._deadlines.add(future, timeout)
        try:
            reply = await future
        except Expired:
            self._give_up(call_id)
            raise CallError(
                grpc.StatusCode.DEADLINE_EXCEEDED, f"no reply within {timeout:.3g}s"
            ) from None
        except asyncio.CancelledError:
            self._give_up(call_id)
            raise
        finally:
            deadline.discard(future)
            del self._pending[call_id]
        result = reply.WhichOneof("result")
        if result == "error":
            if reply.not_forwarded:  # the gate drains: the next registration may take it
                raise NotSent(reply.error.message)
            raise status_error(reply.error)
        if result != op:
            raise CallError(grpc.StatusCode.INTERNAL, f"the gate answered a {op} with {result}")
        return getattr(reply, op)

    def _give_up(self, call_id: int) -> None:
        if self._outbox.pop(call_id, None) is None and self._failed is None:
            self._cancelled.append(call_id)
            self._wake.set()

    def resolve(self, replies: gate_pb2.CallReplies) -> None:
        """Completes the calls these replies answer (a reply for a call given up is dropped)."""
        pending = self._pending
        for reply in replies.replies:
            future = pending.get(reply.id)
            if future is not None and not future.done():
                future.set_result(reply)

    def fail(self, error: CallError, *, none_started: bool = False) -> None:
        """Fails every call waiting: unwritten ones with :class:`NotSent`, written ones with
        `error`, or also with :class:`NotSent` when `none_started` (the gate said it started
        none of them). Later calls fail with :class:`NotSent`. Idempotent."""
        if self._failed is not None:
            return
        self._failed = error
        self._wake.set()
        for call_id, future in self._pending.items():
            if not future.done():
                unsent = none_started or call_id in self._outbox
                future.set_exception(NotSent() if unsent else error)
        self._outbox.clear()
        self._cancelled.clear()

    async def run_writer(self) -> None:
        """Writes the outbox and the cancellations, as one SessionRequest per wake-up, until
        :meth:`fail` (or cancellation). A write that fails fails the stream's calls."""
        while self._failed is None:
            await self._wake.wait()
            self._wake.clear()
            while self._failed is None and (self._outbox or self._cancelled):
                request = self._next_frame()
                try:
                    await self._call.write(request)
                except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
                    log.debug("writing to the session stream failed", exc_info=True)
                    self.fail(CallError(grpc.StatusCode.UNAVAILABLE, "the session stream broke"))

    def _next_frame(self) -> gate_pb2.SessionRequest:
        """The cancellations and the oldest calls that fit one frame, taken from the outbox:
        from here on these calls count as written (the gate may read them)."""
        if not self._outbox or sum(size for _, size in self._outbox.values()) <= self._max_bytes:
            calls = [call for call, _ in self._outbox.values()]
            self._outbox = {}
        else:
            calls = []
            taken = 0
            for call_id, (call, size) in list(self._outbox.items()):
                if calls and taken + size > self._max_bytes:
                    break
                del self._outbox[call_id]
                calls.append(call)
                taken += size
        cancelled = self._cancelled[:MAX_CANCELS]
        del self._cancelled[:MAX_CANCELS]
        return gate_pb2.SessionRequest(calls=calls, cancelled=cancelled)


def _calls_bytes(max_message_bytes: int) -> int:
    return max(max_message_bytes - FRAME_RESERVE, max_message_bytes // 2)


__all__ = ["CallStream", "NotSent"]
