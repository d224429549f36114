"""DeadlineWheel: the deadlines of many calls in flight on one event-loop timer per tick.

The SDK and a gate wait for each call they send with a deadline, and a node runs each call
under one; an event-loop timer per call (``loop.call_later`` or ``asyncio.timeout``: a handle
made, pushed on the loop's heap, cancelled) cost 4-9 % of a gate's and a node's CPU per call
at concurrency 64 (``make bench-profile``), while almost no call ever reaches its deadline.
Here deadlines fall into slots :data:`TICK_S` wide: a call adds its item to its slot's set
and takes it out when it ends, and one timer per slot expires what is still in it. A
deadline fires at the end of its slot: never early, at most one tick late.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

TICK_S = 0.01
"""Width of a slot: how late a deadline may fire."""


class Slot(set[T]):
    """The items whose deadlines fall in one tick. A call removes its item
    (``slot.discard(item)``) when it ends; `fired` says whether the slot's deadlines have
    passed (its items expired)."""

    __slots__ = ("fired",)

    def __init__(self) -> None:
        super().__init__()
        self.fired = False


class DeadlineWheel(Generic[T]):
    """Calls `expire(item)` for each item :meth:`add` took that is still in its slot when
    its deadline (rounded up to the next tick) has passed.

    One wheel belongs to one event loop. A slot's timer holds its items until it fires, so
    what a wheel holds is bounded by the calls in flight within the longest deadline.
    """

    def __init__(self, expire: Callable[[T], None], tick: float = TICK_S) -> None:
        self._expire = expire
        self._tick = tick
        self._slots: dict[int, Slot[T]] = {}

    def add(self, item: T, timeout: float) -> Slot[T]:
        """Gives `item` a deadline `timeout` seconds from now; the caller discards it from
        the returned slot when its call ends."""
        loop = asyncio.get_running_loop()
        index = int((loop.time() + timeout) / self._tick) + 1
        slot = self._slots.get(index)
        if slot is None:
            slot = self._slots[index] = Slot()
            loop.call_at(index * self._tick, self._fire, index)
        slot.add(item)
        return slot

    def _fire(self, index: int) -> None:
        slot = self._slots.pop(index)
        slot.fired = True
        for item in tuple(slot):
            if item in slot:  # expire() may have ended another call, which discarded it
                self._expire(item)

    def __len__(self) -> int:
        """Items waiting for their deadline."""
        return sum(len(slot) for slot in self._slots.values())


__all__ = ["TICK_S", "DeadlineWheel", "Slot"]
