"""Batching on streams: how many queued items one stream message carries (by count and by wire
bytes), and how many items of a message a reader handles before the next hop gets a turn."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from goverse.server._mailbox import Mailbox

T = TypeVar("T")

READ_PACE = 16
"""Most calls a stream's reader starts (or replies it hands back) from one message before it
lets the event loop run the ones it started.

Each hop batches what is ready: at high concurrency every call in flight ends up in one
message, and that one convoy goes round client → gate → node → gate → client with a single
process working on it at a time (measured: 64 calls a message, gate and node each under half a
core busy, two cores idle half the time). Starting a message's calls in slices of this many,
with a turn of the loop between them, sends the first slice on while the next is started:
the hops overlap. Slices smaller than this cost more stream messages than the overlap gains
(docs/performance.md, "One convoy at a time: pacing the readers")."""

REPLY_QUEUE_MESSAGES = 8
"""Stream messages' worth of replies (:attr:`BatchRule.max_bytes` each) a call stream keeps
waiting for a peer that does not read them: a gate's Session stream for its client, a node's
Calls stream for its gate or calling node.

Without it only the count of calls in flight bounded them, so a peer that stopped reading
while its calls answered large results could make the process hold up to that count times
``--max-message-bytes`` (4 GiB per session, 40 GiB per node stream, with the defaults). A
reply that would take the queue over it is replaced by a RESOURCE_EXHAUSTED status (its call
ran; its result is what is lost), and no call is started while the queue is over it. Eight
messages (32 MiB by default) are far more than a peer that reads holds up: the writer takes a
message's worth at a time, as fast as the peer reads."""

CALL_QUEUE_MESSAGES = 8
"""Stream messages' worth of calls (``--max-message-bytes`` each) a sender's Calls stream to a
node (:class:`~goverse.server.NodeCalls`: a gate's, or a node's for its objects' calls) keeps
waiting to be written while the node does not read them: frozen (SIGSTOP, a stalled VM), or
slower than its callers.

Without it only the count of calls in flight bounded them, so a frozen node could make a gate
hold up to ``--max-stream-calls`` frames of up to ``--max-message-bytes`` each (40 GiB with the
defaults) until their deadlines. A call that would take them over it fails at once with
RESOURCE_EXHAUSTED, as one past ``--max-stream-calls`` does: it was never sent. Cancellations
(at most one per call in flight, a few bytes each) are always queued. Eight messages (32 MiB
by default) are far more than a node that reads leaves waiting: the writer sends a message's
worth at a time, as fast as the node takes them."""

GATHER_BELOW = 4
"""A call stream's writer that finds fewer items than this queued gives the event loop one
turn before it takes them (:func:`gathered_batch`).

Calls that start one by one, each in a task of its own (HTTP requests, a node's object
calls), reach the writer a turn or more apart: without the turn every one went in a stream
message of its own, 1.04 call frames a message from a gate serving HTTP calls at concurrency
64 against 11.7 for SDK calls, whose frames arrive together from one session message."""

_LENGTH_DELIMITED = 2
"""The wire type of a message field: tag, then a length varint, then the bytes."""


def varint_size(value: int) -> int:
    """Bytes `value` (not negative) takes as a protobuf varint: 7 bits per byte."""
    return max(1, (value.bit_length() + 6) // 7)


def _tag_size(field: FieldDescriptor) -> int:
    return varint_size(field.number << 3 | _LENGTH_DELIMITED)


class BatchRule:
    """The batching rule of both stream writers: gate → client ``PushedMessages`` and
    node → gate ``EnvelopeBatch``.

    A stream message is a `response` whose field `path` names a batch: one field of the
    response holding a message whose only field is the repeated one (``"messages.messages"``
    for ``RegisterResponse``, ``"envelopes.envelopes"`` for ``RegisterGateResponse``). An item
    takes :meth:`size_of` bytes there: its tag, its length varint and its payload. Each
    enclosing field adds a tag and a length varint (at most that of `max_message_bytes`), so
    items whose sizes add up to :attr:`max_bytes` make a stream message of at most
    `max_message_bytes`: the limit the gRPC server enforces on what it sends.

    Writers size each item once, when they queue it (``Mailbox.put(item, rule.size_of(item))``),
    refuse an item that does not :meth:`fit` even alone (it could never be sent), and read with
    :meth:`next_batch`: at most :attr:`max_items` items and :attr:`max_bytes` bytes, oldest
    first.
    """

    def __init__(
        self, response: type[Message], path: str, *, max_message_bytes: int, max_items: int
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        *enclosing, repeated = _fields(response, path)
        if not repeated.is_repeated or repeated.message_type is None:
            raise ValueError(f"{repeated.full_name} is not a repeated message field")
        batch = repeated.containing_type
        if batch is None or len(batch.fields) != 1:
            raise ValueError(f"{repeated.full_name} is not the only field of its message")
        framing = sum(_tag_size(field) + varint_size(max_message_bytes) for field in enclosing)
        self._tag_size = _tag_size(repeated)
        self.max_items = max_items
        """Most items one stream message carries."""
        self.max_bytes = max(max_message_bytes - framing, 1)
        """Most bytes the items of one stream message take together (their :meth:`size_of`)."""

    def size_of(self, item: Message) -> int:
        """Bytes `item` takes as one element of the repeated field."""
        payload = item.ByteSize()
        return self._tag_size + varint_size(payload) + payload

    def fits(self, size: int) -> bool:
        """Whether an item of `size` bytes (its :meth:`size_of`) fits one stream message."""
        return size <= self.max_bytes

    async def next_batch(self, mailbox: Mailbox[T], timeout: float | None = None) -> list[T] | None:
        """Waits for items in `mailbox` and returns the oldest that fit one stream message;
        ``[]`` after `timeout` seconds with nothing queued, None once the mailbox is closed
        and empty (see :meth:`Mailbox.get_batch`)."""
        return await mailbox.get_batch(self.max_items, timeout, self.max_bytes)

    async def gathered_batch(self, mailbox: Mailbox[T]) -> list[T] | None:
        """:meth:`next_batch` without a timeout, as :func:`gathered_batch` takes it."""
        return await gathered_batch(mailbox, self.max_items, self.max_bytes)


async def gathered_batch(mailbox: Mailbox[T], max_items: int, max_bytes: int = 0) -> list[T] | None:
    """:meth:`Mailbox.get_batch` without a timeout, except that a lone item or a few (fewer
    than :data:`GATHER_BELOW`) wait one turn of the event loop for others to join them."""
    while True:
        await mailbox.wait()
        if 0 < len(mailbox) < GATHER_BELOW:
            await asyncio.sleep(0)
        batch = mailbox.take_batch(max_items, max_bytes)
        if batch is None or batch:
            return batch


def _fields(response: type[Message], path: str) -> list[FieldDescriptor]:
    """The fields `path` names, from the one of `response` down."""
    fields: list[FieldDescriptor] = []
    descriptor: Any = response.DESCRIPTOR
    for name in path.split("."):
        field = None if descriptor is None else descriptor.fields_by_name.get(name)
        if field is None:
            raise ValueError(f"{response.DESCRIPTOR.full_name} has no field {path!r}")
        fields.append(field)
        descriptor = field.message_type
    return fields


__all__ = [
    "CALL_QUEUE_MESSAGES",
    "GATHER_BELOW",
    "READ_PACE",
    "REPLY_QUEUE_MESSAGES",
    "BatchRule",
    "gathered_batch",
    "varint_size",
]
