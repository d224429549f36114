"""ClientProxy: one client's identity, bounded push queue, close state and Register stream."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, Callable
from typing import Any

import grpc
import structlog

from goverse import wire
from goverse.gate._push_messages import PushMessages
from goverse.server import BatchRule, DropReason, Mailbox
from goverse.v1 import gate_pb2, node_pb2

log = structlog.get_logger(__name__)


class SlowClientPolicy(enum.StrEnum):
    """What an overflow of a client's queue does (``--slow-client-policy``)."""

    DISCONNECT = "disconnect"
    """The client is disconnected as a slow consumer and its queue is discarded."""
    DROP_OLDEST = "drop-oldest"
    """The oldest queued pushes are dropped to make room; the client keeps its stream."""


_SLOW_CONSUMER = "slow consumer"
"""The close text of a proxy whose queue overflowed under the disconnect policy."""

TOKEN_EXPIRED_DETAILS = "the token has expired: register again with a fresh token"
"""What a client whose session outlived its token is told (UNAUTHENTICATED)."""


class StreamEnd(Exception):
    """How a Register stream ends when it does not end with OK: the servicer aborts with it.

    `reason`, when there is one, goes to the client as ``goverse-close-reason`` trailing
    metadata.
    """

    def __init__(
        self, code: grpc.StatusCode, details: str, reason: wire.CloseReason | None = None
    ) -> None:
        super().__init__(details)
        self.code = code
        self.details = details
        self.reason = reason


class ClientProxy:
    """The gate's side of one client's Register stream.

    Object code on the nodes pushes to the client through :meth:`push`, which never blocks and
    never raises: it returns False when the proxy is closed or its queue is full. The stream
    writer (the Register handler) is the only reader: it sends the events of :meth:`stream`,
    which takes pushes in batches (:meth:`next_batch`), and never sees the queue itself.

    :meth:`close` ends the proxy; it is idempotent and safe to call multiple times, from any
    task. A *draining* close (the gate is shutting down) keeps what is queued so the writer can
    flush it and then send a ``Draining`` event; any other close discards the queue.
    :attr:`closed_by` says why the proxy was closed, as a :class:`~goverse.wire.CloseReason`.

    A push that does not fit the queue (either bound) is an *overflow*, handled by `overflow`
    (a :class:`SlowClientPolicy`, or its value):

    - ``disconnect`` (the default): the proxy closes as a slow consumer. Its queue is discarded
      at once, so the gate's memory for it is freed whatever the client does next, and the
      writer ends the stream with RESOURCE_EXHAUSTED; the client reconnects and resynchronises.
      :attr:`slow_consumer` is True and `on_slow_consumer` is called once.
    - ``drop-oldest``: the oldest queued pushes are dropped (counted as ``queue_full``) until
      the new one fits; the client keeps its stream and misses what was dropped.

    `max_batch_bytes` is the size limit of one stream message: a push that would not fit one
    even alone is refused (``message_too_large``), and batches are cut to fit it
    (:class:`~goverse.server.BatchRule`). `messages` builds the stream messages of a batch
    (the registry's, shared by its clients: a broadcast's message is built once).
    """

    def __init__(
        self,
        client_id: str,
        credential: str,
        *,
        max_messages: int,
        max_bytes: int,
        max_batch_bytes: int,
        overflow: SlowClientPolicy | str = SlowClientPolicy.DISCONNECT,
        on_drop: Callable[[DropReason, int], None] | None = None,
        on_slow_consumer: Callable[[ClientProxy], None] | None = None,
        messages: PushMessages | None = None,
    ) -> None:
        try:
            self._overflow = SlowClientPolicy(overflow)
        except ValueError:
            raise ValueError(f"unknown overflow policy {overflow!r}") from None
        self._client_id = client_id
        self._credential = credential
        self.caller = node_pb2.Caller(client_id=client_id)
        """What the gate stamps on every call of this client: its id and, once the registry
        set it, the principal it authenticated as."""
        self._mailbox: Mailbox[Any] = Mailbox(max_messages, max_bytes)
        self._batching = BatchRule(
            gate_pb2.RegisterResponse,
            "messages.messages",
            max_message_bytes=max_batch_bytes,
            max_items=max_messages,
        )
        self._max_message_bytes = max_batch_bytes
        self.messages = messages if messages is not None else PushMessages()
        """Builds the stream messages that carry this client's batches of pushes."""
        self._on_drop = on_drop
        self._on_slow_consumer = on_slow_consumer
        self._closed_by: wire.CloseReason | None = None
        self._closed_event = asyncio.Event()
        self._slow_consumer_details = ""
        self._pushed = 0
        self._dropped = 0

    def __repr__(self) -> str:  # never shows the credential
        state = "closed" if self.closed else "open"
        return f"<ClientProxy {self._client_id} {state} queued={len(self._mailbox)}>"

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def credential(self) -> str:
        """The secret the client presents on its calls."""
        return self._credential

    @property
    def closed(self) -> bool:
        return self._mailbox.closed

    @property
    def close_reason(self) -> str:
        """The text of the proxy's first close (what :meth:`close` was given); empty while
        open. A draining close sends it to the client in ``Draining``."""
        return self._mailbox.close_reason

    @property
    def closed_by(self) -> wire.CloseReason | None:
        """Why the proxy was closed (its first close); None while open."""
        return self._closed_by

    @property
    def draining(self) -> bool:
        """True when the proxy was first closed by a draining close."""
        return self._closed_by is wire.CloseReason.SHUTDOWN

    @property
    def slow_consumer(self) -> bool:
        """True when the proxy was closed because its queue overflowed (disconnect policy)."""
        return self._closed_by is wire.CloseReason.SLOW_CONSUMER

    @property
    def slow_consumer_details(self) -> str:
        """What the client is told when it is disconnected as a slow consumer."""
        return self._slow_consumer_details

    @property
    def queued(self) -> int:
        """Pushes waiting for the stream writer."""
        return len(self._mailbox)

    @property
    def queued_bytes(self) -> int:
        return self._mailbox.nbytes

    @property
    def pushed(self) -> int:
        """Pushes accepted since registration."""
        return self._pushed

    @property
    def dropped(self) -> int:
        """Pushes refused or discarded since registration (closed, overflow, too large)."""
        return self._dropped

    def size_of(self, message: Any) -> int | None:
        """The size :meth:`push` counts for `message`, or None when it cannot be sized (then
        :meth:`push` refuses it)."""
        try:
            return self._batching.size_of(message)
        except Exception:  # sized again, and refused, by push
            return None

    def push(self, message: Any, size: int | None = None) -> bool:
        """Queues `message` (a ``google.protobuf.Any``) for the client; `size` is its
        :meth:`~goverse.server.BatchRule.size_of` when the caller knows it already (a
        broadcast sizes its message once for every client).

        Returns True when queued (under ``drop-oldest``, also when older pushes made room);
        False when the proxy is closed, the message alone is larger than one stream message
        may be, or the queue overflowed under ``disconnect``. Never blocks, never raises.
        """
        if self._mailbox.closed:
            return self._drop(DropReason.CLIENT_CLOSED)
        try:
            if size is None:
                size = self._batching.size_of(message)
        except Exception:  # a push must never raise into the caller
            log.exception("cannot size a push", client_id=self._client_id)
            return self._drop(DropReason.MESSAGE_TOO_LARGE)
        if not self._batching.fits(size):
            return self._drop(DropReason.MESSAGE_TOO_LARGE)
        if not self._mailbox.put(message, size):
            return self._on_overflow(message, size)
        self._pushed += 1
        return True

    def _on_overflow(self, message: Any, size: int) -> bool:
        """A push that does not fit the queue, handled by the overflow policy."""
        if self._overflow is SlowClientPolicy.DROP_OLDEST:
            if self._dropped == 0:
                log.warning(
                    "client queue full, dropping its oldest pushes",
                    client_id=self._client_id,
                    queued=len(self._mailbox),
                    queued_bytes=self._mailbox.nbytes,
                )
            while self._mailbox.would_overflow(size) and self._mailbox.drop_oldest() is not None:
                self._drop(DropReason.QUEUE_FULL)
            if not self._mailbox.put(message, size):
                return self._drop(DropReason.QUEUE_FULL)
            self._pushed += 1
            return True
        queued, queued_bytes = len(self._mailbox), self._mailbox.nbytes
        self._slow_consumer_details = (
            f"slow consumer: the client did not read its pushes fast enough; its queue of "
            f"{queued} pushes ({queued_bytes} bytes) overflowed and was discarded. Register "
            "again and resynchronise"
        )
        self._close(_SLOW_CONSUMER, wire.CloseReason.SLOW_CONSUMER, discard_as=None)
        log.warning(
            "client disconnected as a slow consumer",
            client_id=self._client_id,
            queued=queued,
            queued_bytes=queued_bytes,
            push_bytes=size,
        )
        if self._on_slow_consumer is not None:
            self._on_slow_consumer(self)
        return self._drop(DropReason.SLOW_CONSUMER, queued + 1)

    def _drop(self, reason: DropReason, count: int = 1) -> bool:
        self._dropped += count
        if self._on_drop is not None:
            self._on_drop(reason, count)
        return False

    def close(self, reason: str, *, drain: bool = False) -> bool:
        """Closes the proxy with the text `reason`; True on the first call only. Safe to call
        multiple times.

        From the first call on, :meth:`push` returns False. With `drain` (the gate is shutting
        down: :attr:`closed_by` is ``shutdown``), what is queued is kept for the writer to
        flush, then :meth:`next_batch` returns None and :attr:`draining` is True. Without it
        (the stream ended: ``peer_gone``), the queue is discarded at once, also when the proxy
        was already closed by a draining close: nobody is left to flush to. The pushes
        discarded so are dropped pushes (``client_closed``), counted as such.
        """
        if drain:
            return self._close(reason, wire.CloseReason.SHUTDOWN, discard_as=None, keep=True)
        return self._close(reason, wire.CloseReason.PEER_GONE, discard_as=DropReason.CLIENT_CLOSED)

    def _close(
        self,
        text: str,
        closed_by: wire.CloseReason,
        *,
        discard_as: DropReason | None,
        keep: bool = False,
    ) -> bool:
        """Closes the mailbox with `text`, discarding what it holds unless `keep`; what is
        discarded is counted as dropped for `discard_as` (None: the caller counts it)."""
        discarded = 0 if keep else len(self._mailbox)
        first = self._mailbox.close(text, discard=not keep)
        if first:
            self._closed_by = closed_by
            self._closed_event.set()
        if discarded and discard_as is not None:
            self._drop(discard_as, discarded)
        return first

    def expire(self) -> bool:
        """Closes the proxy because the token it registered with has expired (the session
        timer of :func:`~goverse.gate._auth.session_expiry` calls it): its queue is
        discarded and the writer ends the stream with UNAUTHENTICATED (``token_expired``).
        True on the first close only."""
        return self._close(
            "token expired", wire.CloseReason.TOKEN_EXPIRED, discard_as=DropReason.CLIENT_CLOSED
        )

    @property
    def token_expired(self) -> bool:
        """True when the proxy was first closed because its token expired."""
        return self._closed_by is wire.CloseReason.TOKEN_EXPIRED

    async def wait_closed(self) -> None:
        """Waits until the proxy is closed (at once when it is): for a writer blocked on a
        stalled transport, which must give up once the proxy was closed as a slow consumer."""
        await self._closed_event.wait()

    async def next_batch(self) -> list[Any] | None:
        """Waits for pushes and returns the oldest of them that fit in one stream message.

        Returns None once the proxy is closed: at once after a discarding close, once the
        queue is flushed after a draining close. Cancellable at any point without loss of
        anything but the wait.
        """
        return await self._batching.next_batch(self._mailbox)

    def take_batch(self) -> list[Any] | None:
        """What :meth:`next_batch` returns, without waiting: ``[]`` when nothing is queued."""
        return self._mailbox.take_batch(self._batching.max_items, self._batching.max_bytes)

    async def wait(self) -> None:
        """Waits until a push is queued, the proxy is closed, or :meth:`wake` is called (for a
        writer that also sends other things than pushes: a Session stream's call replies)."""
        await self._mailbox.wait()

    def wake(self) -> None:
        """Ends the writer's current :meth:`wait`: it has something else to send."""
        self._mailbox.wake()

    def registered(self, gate_id: str) -> gate_pb2.Registered:
        """The first event of the client's stream: its client id, credential and `gate_id`."""
        return gate_pb2.Registered(
            client_id=self._client_id,
            credential=self._credential,
            gate_id=gate_id,
            max_message_bytes=self._max_message_bytes,
        )

    def last_event(self) -> gate_pb2.Draining | None:
        """How the client's stream ends once :meth:`next_batch` returned None.

        After a draining close, ``Draining`` with the close text: the writer sends it and the
        stream then ends with OK. After a slow-consumer close it raises :class:`StreamEnd`
        (RESOURCE_EXHAUSTED, ``slow_consumer``), after an expired token's close too
        (UNAUTHENTICATED, ``token_expired``). Otherwise (the client went away) None.
        """
        if self.draining:
            return gate_pb2.Draining(reason=self.close_reason)
        if self.slow_consumer:
            # The queue is already discarded; this status follows whatever the transport still
            # holds, and tells the client to register again.
            raise StreamEnd(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                self._slow_consumer_details,
                wire.CloseReason.SLOW_CONSUMER,
            )
        if self.token_expired:
            raise StreamEnd(
                grpc.StatusCode.UNAUTHENTICATED,
                TOKEN_EXPIRED_DETAILS,
                wire.CloseReason.TOKEN_EXPIRED,
            )
        return None

    async def stream(self, gate_id: str) -> AsyncGenerator[gate_pb2.RegisterResponse, None]:
        """The events of this client's Register stream, in the order the writer sends them.

        ``Registered`` (client id, credential and `gate_id`) first, then one ``PushedMessages``
        per batch until the proxy is closed, then what :meth:`last_event` says. Holds nothing
        to clean up: the registration ends in :meth:`ClientRegistry.connect`.
        """
        yield gate_pb2.RegisterResponse(registered=self.registered(gate_id))
        # take_batch and wait, not next_batch: a stream waits once per push it delivers, and
        # next_batch's three coroutines in between cost a broadcast to 1,000 streams 3 % of
        # the gate's CPU.
        while (batch := self.take_batch()) is not None:
            if batch:
                yield self.messages.register(batch)
            else:
                await self._mailbox.wait()
        if (draining := self.last_event()) is not None:
            yield gate_pb2.RegisterResponse(draining=draining)
