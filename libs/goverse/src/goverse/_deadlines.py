"""DeadlineWheel: the deadlines of many calls in flight on one event-loop timer.

The SDK and a gate wait for each call they send with a deadline, and a node runs each call
under one; an event-loop timer per call (``loop.call_later`` or ``asyncio.timeout``: a handle
made, pushed on the loop's heap, cancelled) cost 4-9 % of a gate's and a node's CPU per call
at concurrency 64 (``make bench-profile``), while almost no call ever reaches its deadline.
Here deadlines fall into slots :data:`TICK_S` wide: a call adds its item to its slot's set
and takes it out when it ends (a slot left empty leaves the wheel), and one timer, set for
the earliest slot, expires what is still in the slots due. A deadline fires at the end of its
slot: never early, at most one tick late.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

TICK_S = 0.01
"""Width of a slot: how late a deadline may fire."""
COMPACT_SLACK = 64
"""Indices of emptied slots the wheel's heap may hold beyond twice its live slots."""


class Expired(Exception):
    """A call's reply did not come before its deadline (what :func:`expire_future` sets)."""


def expire_future(future: asyncio.Future[Any]) -> None:
    """The `expire` of a wheel of futures a call awaits: fails one still waiting with
    :class:`Expired`."""
    if not future.done():
        future.set_exception(Expired())


class Slot(set[T]):
    """The items whose deadlines fall in one tick. A call removes its item
    (``slot.discard(item)``) when it ends; `fired` says whether the slot's deadlines have
    passed (its items expired)."""

    __slots__ = ("_index", "_wheel", "fired")

    def __init__(self, wheel: DeadlineWheel[T], index: int) -> None:
        super().__init__()
        self.fired = False
        self._wheel = wheel
        self._index = index

    def discard(self, item: object, /) -> None:
        """Takes `item` out (its call ended); a slot left empty leaves the wheel."""
        set.discard(self, item)
        if not self and not self.fired and self is not self._wheel._newest:
            self._wheel._forget(self, self._index)


class DeadlineWheel(Generic[T]):
    """Calls `expire(item)` for each item :meth:`add` took that is still in its slot when
    its deadline (rounded up to the next tick) has passed.

    One wheel belongs to one event loop. What it holds is bounded by the calls in flight: a
    slot leaves it when its last call ends (the newest slot once another is made), and the
    heap of slot indices is compacted when emptied slots outnumber live ones. Its one timer
    is set for the earliest slot; when that slot has emptied by then, it moves on to the next.
    """

    def __init__(self, expire: Callable[[T], None], tick: float = TICK_S) -> None:
        self._expire = expire
        self._tick = tick
        self._slots: dict[int, Slot[T]] = {}
        self._due: list[int] = []
        """A heap of slot indices: every live slot's, and some of slots emptied since."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_index = 0
        self._newest: Slot[T] | None = None
        """The slot made last, kept when empty: calls one after another land in it again
        within its tick instead of making a slot each."""

    def add(self, item: T, timeout: float) -> Slot[T]:
        """Gives `item` a deadline `timeout` seconds from now; the caller discards it from
        the returned slot when its call ends."""
        loop = asyncio.get_running_loop()
        index = int((loop.time() + timeout) / self._tick) + 1
        slot = self._slots.get(index)
        if slot is None:
            newest = self._newest
            if newest is not None and not newest and not newest.fired:
                self._forget(newest, newest._index)
            slot = self._slots[index] = self._newest = Slot(self, index)
            heapq.heappush(self._due, index)
            if self._timer is None or index < self._timer_index:
                self._schedule(loop, index)
        slot.add(item)
        return slot

    def __len__(self) -> int:
        """Items waiting for their deadline."""
        return sum(len(slot) for slot in self._slots.values())

    def _schedule(self, loop: asyncio.AbstractEventLoop, index: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_index = index
        self._timer = loop.call_at(index * self._tick, self._fire)

    def _forget(self, slot: Slot[T], index: int) -> None:
        if self._slots.get(index) is slot:
            del self._slots[index]
            if len(self._due) > 2 * len(self._slots) + COMPACT_SLACK:
                self._due = sorted(self._slots)  # a sorted list is a heap

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        # The slot the timer was set for is due, and any other whose end has passed.
        last = max(self._timer_index, int(loop.time() / self._tick))
        due = self._due
        while due and due[0] <= last:
            slot = self._slots.pop(heapq.heappop(due), None)
            if slot is None:
                continue  # emptied before its deadline
            slot.fired = True
            for item in tuple(slot):
                if item in slot:  # expire() may have ended another call, which discarded it
                    self._expire(item)
        while due and due[0] not in self._slots:
            heapq.heappop(due)
        if due:
            self._schedule(loop, due[0])


__all__ = ["TICK_S", "DeadlineWheel", "Expired", "Slot", "expire_future"]
