"""ClientProxy: one registered client's identity, its bounded push queue and its close state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from goverse.server import Mailbox

log = structlog.get_logger(__name__)

# Drop reasons, as counted by the registry and logged.
DROP_CLOSED = "client_closed"
DROP_QUEUE_FULL = "queue_full"
DROP_TOO_LARGE = "too_large"
DROP_SLOW_CONSUMER = "slow_consumer"
"""The pushes a slow consumer's disconnect discarded: the one that overflowed and its queue."""

# Overflow policies (``--slow-client-policy``).
OVERFLOW_DISCONNECT = "disconnect"
OVERFLOW_DROP_OLDEST = "drop-oldest"

SLOW_CONSUMER = "slow consumer"
"""The close reason of a proxy whose queue overflowed under the disconnect policy."""

# Room a RegisterResponse needs around its PushedMessages (field tags and length prefixes).
_ENVELOPE_OVERHEAD = 16


def _varint_len(value: int) -> int:
    length = 1
    while value >= 0x80:
        value >>= 7
        length += 1
    return length


def _wire_size(message: Any) -> int:
    """Bytes `message` takes as one element of ``PushedMessages.messages``."""
    size = int(message.ByteSize())
    return 1 + _varint_len(size) + size


class ClientProxy:
    """The gate's side of one client's Register stream.

    Object code on the nodes pushes to the client through :meth:`push`, which never blocks and
    never raises: it returns False when the proxy is closed or its queue is full. The stream
    writer (the Register handler) is the only reader; it takes pushes in batches with
    :meth:`next_batch` and never sees the queue itself.

    :meth:`close` ends the proxy; it is idempotent and safe to call multiple times, from any
    task. A *draining* close (the gate is shutting down) keeps what is queued so the writer can
    flush it and then send a ``Draining`` event; any other close discards the queue.

    A push that does not fit the queue (either bound) is an *overflow*, handled by `overflow`:

    - ``disconnect`` (the default): the proxy closes as a slow consumer. Its queue is discarded
      at once, so the gate's memory for it is freed whatever the client does next, and the
      writer ends the stream with RESOURCE_EXHAUSTED; the client reconnects and resynchronises.
      :attr:`slow_consumer` is True and `on_slow_consumer` is called once.
    - ``drop-oldest``: the oldest queued pushes are dropped (counted as ``queue_full``) until
      the new one fits; the client keeps its stream and misses what was dropped.
    """

    def __init__(
        self,
        client_id: str,
        credential: str,
        *,
        max_messages: int,
        max_bytes: int,
        max_batch_bytes: int,
        overflow: str = OVERFLOW_DISCONNECT,
        on_drop: Callable[[str, int], None] | None = None,
        on_slow_consumer: Callable[[ClientProxy], None] | None = None,
    ) -> None:
        if overflow not in (OVERFLOW_DISCONNECT, OVERFLOW_DROP_OLDEST):
            raise ValueError(f"unknown overflow policy {overflow!r}")
        self._client_id = client_id
        self._credential = credential
        self._mailbox: Mailbox[Any] = Mailbox(max_messages, max_bytes)
        self._max_batch_messages = max_messages
        self._max_batch_bytes = max(max_batch_bytes - _ENVELOPE_OVERHEAD, 1)
        self._overflow = overflow
        self._on_drop = on_drop
        self._on_slow_consumer = on_slow_consumer
        self._slow_consumer = ""
        self._draining = False
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
        """Why the proxy was closed (its first close); empty while open."""
        return self._mailbox.close_reason

    @property
    def draining(self) -> bool:
        """True when the proxy was first closed by a draining close."""
        return self._draining

    @property
    def slow_consumer(self) -> bool:
        """True when the proxy was closed because its queue overflowed (disconnect policy)."""
        return bool(self._slow_consumer)

    @property
    def slow_consumer_details(self) -> str:
        """What the client is told when it is disconnected as a slow consumer."""
        return self._slow_consumer

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

    def push(self, message: Any) -> bool:
        """Queues `message` (a ``google.protobuf.Any``) for the client.

        Returns True when queued (under ``drop-oldest``, also when older pushes made room);
        False when the proxy is closed, the message alone is larger than one stream message
        may be, or the queue overflowed under ``disconnect``. Never blocks, never raises.
        """
        if self._mailbox.closed:
            return self._drop(DROP_CLOSED)
        try:
            size = _wire_size(message)
        except Exception:  # a push must never raise into the caller
            log.exception("cannot size a push", client_id=self._client_id)
            return self._drop(DROP_TOO_LARGE)
        if size > self._max_batch_bytes:
            return self._drop(DROP_TOO_LARGE)
        if not self._mailbox.put(message, size):
            return self._on_overflow(message, size)
        self._pushed += 1
        return True

    def _on_overflow(self, message: Any, size: int) -> bool:
        """A push that does not fit the queue, handled by the overflow policy."""
        if self._overflow == OVERFLOW_DROP_OLDEST:
            if self._dropped == 0:
                log.warning(
                    "client queue full, dropping its oldest pushes",
                    client_id=self._client_id,
                    queued=len(self._mailbox),
                    queued_bytes=self._mailbox.nbytes,
                )
            while self._mailbox.would_overflow(size) and self._mailbox.drop_oldest() is not None:
                self._drop(DROP_QUEUE_FULL)
            if not self._mailbox.put(message, size):
                return self._drop(DROP_QUEUE_FULL)
            self._pushed += 1
            return True
        queued, queued_bytes = len(self._mailbox), self._mailbox.nbytes
        self._slow_consumer = (
            f"slow consumer: the client did not read its pushes fast enough; its queue of "
            f"{queued} pushes ({queued_bytes} bytes) overflowed and was discarded. Register "
            "again and resynchronise"
        )
        self.close(SLOW_CONSUMER)
        log.warning(
            "client disconnected as a slow consumer",
            client_id=self._client_id,
            queued=queued,
            queued_bytes=queued_bytes,
            push_bytes=size,
        )
        if self._on_slow_consumer is not None:
            self._on_slow_consumer(self)
        return self._drop(DROP_SLOW_CONSUMER, queued + 1)

    def _drop(self, reason: str, count: int = 1) -> bool:
        self._dropped += count
        if self._on_drop is not None:
            self._on_drop(reason, count)
        return False

    def close(self, reason: str, *, drain: bool = False) -> bool:
        """Closes the proxy; True on the first call only. Safe to call multiple times.

        From the first call on, :meth:`push` returns False. With `drain`, what is queued is
        kept for the writer to flush, then :meth:`next_batch` returns None and
        :attr:`draining` is True; without it, the queue is discarded at once (also when the
        proxy was already closed by a draining close: nobody is left to flush to).
        """
        first = self._mailbox.close(reason, discard=not drain)
        if first:
            self._draining = drain
        return first

    async def next_batch(self) -> list[Any] | None:
        """Waits for pushes and returns the oldest of them that fit in one stream message.

        Returns None once the proxy is closed: at once after a discarding close, once the
        queue is flushed after a draining close. Cancellable at any point without loss of
        anything but the wait.
        """
        return await self._mailbox.get_batch(
            self._max_batch_messages, max_bytes=self._max_batch_bytes
        )
