"""Mailbox: a queue bounded by items and bytes that never blocks the writer and reads in batches."""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """A single-reader queue for stream writers.

    :meth:`put` never blocks and never raises: it returns False when the mailbox is closed or
    full (the caller decides what overflow means). The reader takes everything queued in one
    :meth:`get_batch`, so one stream message can carry many items. :meth:`close` is idempotent;
    a closed mailbox hands out what it holds unless closed with ``discard=True``, then returns
    None from :meth:`get_batch`.
    """

    def __init__(self, max_items: int, max_bytes: int = 0) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        self._items: collections.deque[tuple[T, int]] = collections.deque()
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._bytes = 0
        self._ready = asyncio.Event()
        self._closed = False
        self._close_reason = ""

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_reason(self) -> str:
        return self._close_reason

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        """Bytes queued, as told by the `size` arguments of :meth:`put`."""
        return self._bytes

    def would_overflow(self, size: int) -> bool:
        if len(self._items) >= self._max_items:
            return True
        return bool(self._max_bytes and self._items and self._bytes + size > self._max_bytes)

    def put(self, item: T, size: int = 0) -> bool:
        """Queues `item`; False when closed or when it would exceed a bound."""
        if self._closed or self.would_overflow(size):
            return False
        self._items.append((item, size))
        self._bytes += size
        self._ready.set()
        return True

    def drop_oldest(self) -> T | None:
        """Removes and returns the oldest item, or None when empty."""
        if not self._items:
            return None
        item, size = self._items.popleft()
        self._bytes -= size
        return item

    def move_to(self, other: Mailbox[T]) -> int:
        """Moves what is queued into `other`, oldest first, with the sizes it was put with;
        returns how many items `other` took. What it refused stays here."""
        moved = 0
        while self._items and other.put(*self._items[0]):
            _, size = self._items.popleft()
            self._bytes -= size
            moved += 1
        return moved

    def close(self, reason: str, *, discard: bool = False) -> bool:
        """Closes the mailbox; True on the first call only. `discard` drops what is queued."""
        if self._closed:
            if discard:
                self._clear()
            return False
        self._closed = True
        self._close_reason = reason
        if discard:
            self._clear()
        self._ready.set()
        return True

    def _clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    async def get_batch(
        self, max_items: int, timeout: float | None = None, max_bytes: int = 0
    ) -> list[T] | None:
        """Waits for items and returns up to `max_items` of them, oldest first.

        With `max_bytes`, the batch also stops before an item that would take the sum of the
        `size` arguments over it (the first item is always taken), so one stream message built
        from a batch stays under a message-size limit.

        Returns ``[]`` when `timeout` seconds pass with nothing queued, and None once the
        mailbox is closed and empty.
        """
        while not self._items:
            if self._closed:
                return None
            self._ready.clear()
            if timeout is None:
                await self._ready.wait()
                continue
            try:
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
            except TimeoutError:
                return []
        return self.take_batch(max_items, max_bytes)

    def take_batch(self, max_items: int, max_bytes: int = 0) -> list[T] | None:
        """What :meth:`get_batch` returns, without waiting: ``[]`` when nothing is queued."""
        if not self._items:
            return None if self._closed else []
        if len(self._items) == 1:  # what a stream that keeps up takes, push after push
            item, size = self._items.popleft()
            self._bytes -= size
            return [item]
        count = min(max_items, len(self._items))
        batch: list[T] = []
        taken = 0
        for _ in range(count):
            size = self._items[0][1]
            if max_bytes and batch and taken + size > max_bytes:
                break
            item, size = self._items.popleft()
            self._bytes -= size
            taken += size
            batch.append(item)
        return batch

    async def wait(self) -> None:
        """Waits until something is queued, the mailbox is closed, or :meth:`wake` is called
        (at once when one of them already holds). For a reader that also waits for other work
        than this mailbox's: whoever makes that work calls :meth:`wake`."""
        if self._items or self._closed:
            return
        self._ready.clear()
        await self._ready.wait()

    def wake(self) -> None:
        """Ends the reader's current :meth:`wait`; the reader checks its other work before it
        waits again, without an await in between, so no wake is lost."""
        self._ready.set()
