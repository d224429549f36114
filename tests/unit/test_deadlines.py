"""DeadlineWheel: deadlines expire never early, at most a tick late, and only for items still
waiting; items of one tick share a slot."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from goverse._deadlines import TICK_S, DeadlineWheel

WAIT = 5.0


class Expiries:
    """A wheel's `expire`: records what expired, and when (loop time); `first()` waits for the
    first expiry. `also(item)` runs as each item expires (a call ending others)."""

    def __init__(self) -> None:
        self.items: list[object] = []
        self.at: dict[object, float] = {}
        self._fired = asyncio.Event()
        self.also: Callable[[object], None] = lambda item: None

    def __call__(self, item: object) -> None:
        self.items.append(item)
        self.at[item] = asyncio.get_running_loop().time()
        self.also(item)
        self._fired.set()

    async def first(self) -> None:
        async with asyncio.timeout(WAIT):
            await self._fired.wait()


async def test_an_item_still_waiting_expires_after_its_deadline_not_before() -> None:
    expired = Expiries()
    wheel: DeadlineWheel[object] = DeadlineWheel(expired)
    added = asyncio.get_running_loop().time()
    slot = wheel.add("late", 0.05)
    assert not slot.fired
    await expired.first()
    assert expired.at["late"] - added >= 0.05
    assert slot.fired
    assert len(wheel) == 0


async def test_an_item_discarded_before_its_deadline_never_expires() -> None:
    expired = Expiries()
    wheel: DeadlineWheel[object] = DeadlineWheel(expired)
    wheel.add("done", 0.02).discard("done")
    wheel.add("kept", 0.04)  # a later tick: fires after the slot of "done"
    await expired.first()
    assert expired.items == ["kept"]


async def test_items_whose_deadlines_fall_in_one_tick_share_its_slot() -> None:
    wheel: DeadlineWheel[int] = DeadlineWheel(lambda item: None, tick=3600.0)
    first = wheel.add(1, 10.0)
    second = wheel.add(2, 10.0)
    assert first is second
    assert sorted(first) == [1, 2]
    assert len(wheel) == 2


async def test_expiring_may_end_calls_of_the_same_slot() -> None:
    """expire() of one item may discard others (a call that ends takes its item out)."""
    expired = Expiries()
    expired.also = lambda item: slot.discard(3 - item)  # type: ignore[operator]
    wheel: DeadlineWheel[object] = DeadlineWheel(expired, tick=TICK_S)
    slot = wheel.add(1, 0.0)
    slot.add(2)  # as if added in the same tick
    await expired.first()
    await asyncio.sleep(0)  # the rest of the slot, had it gone on
    assert len(expired.items) == 1
    assert slot.fired


async def test_a_task_cancelled_by_its_deadline_can_tell_it_from_another_cancel() -> None:
    """What the node does with it: the wheel cancels the task, which sees its slot fired and
    takes the cancel back (``uncancel``); a cancel of its own is still a cancel."""

    def expire(task: asyncio.Task[str]) -> None:
        task.cancel()

    wheel: DeadlineWheel[asyncio.Task[str]] = DeadlineWheel(expire)

    async def call(timeout: float, also_cancelled: bool) -> str:
        task = asyncio.current_task()
        assert task is not None
        slot = wheel.add(task, timeout)
        try:
            if also_cancelled:
                task.cancel()
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            if slot.fired and task.uncancel() == 0:
                return "deadline"
            raise
        finally:
            slot.discard(task)
        return "done"

    async with asyncio.timeout(5):
        assert await asyncio.create_task(call(0.02, also_cancelled=False)) == "deadline"
        other = asyncio.create_task(call(0.02, also_cancelled=True))
        await asyncio.wait([other])
    assert other.cancelled()


async def test_an_earlier_deadline_added_after_a_later_one_fires_first() -> None:
    expired = Expiries()
    wheel: DeadlineWheel[object] = DeadlineWheel(expired)
    wheel.add("later", 5.0)
    wheel.add("sooner", 0.02)
    await expired.first()
    assert expired.items == ["sooner"]
    assert len(wheel) == 1


async def test_what_the_wheel_holds_is_bounded_by_the_calls_in_flight() -> None:
    """Calls with long deadlines, each in a slot of its own, that end: their slots leave the
    wheel (but the newest, kept for the next call) and the heap of indices is compacted
    (white-box: the wheel's own tables)."""
    wheel: DeadlineWheel[int] = DeadlineWheel(lambda item: None)
    live = wheel.add(-1, 3600.0)
    for item in range(10_000):
        wheel.add(item, 60.0 + item * TICK_S * 2).discard(item)
    assert len(wheel) == 1
    assert live in wheel._slots.values()
    assert len(wheel._slots) <= 2
    assert len(wheel._due) <= 2 * 2 + 64 + 1


async def test_discarding_from_a_slot_that_left_the_wheel_leaves_its_successor_alone() -> None:
    """A slot emptied twice (a call ending twice) must not take a newer slot of the same tick
    out of the wheel."""
    expired = Expiries()
    wheel: DeadlineWheel[object] = DeadlineWheel(expired, tick=0.2)
    old = wheel.add("a", 0.0)
    wheel.add("z", 60.0)  # the newest slot now: an emptied older one leaves
    old.discard("a")
    new = wheel.add("b", 0.0)  # a new slot, for the same tick (or the next)
    old.discard("a")
    assert new is not old
    assert len(wheel) == 2
    await expired.first()
    assert expired.items == ["b"]
