"""A fake clock for unit tests of timed loops: time moves only when the test advances it."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Implements :class:`goverse.server._lease.Clock`: :meth:`now` is what the test set, and
    :meth:`sleep_until` returns when the test :meth:`advance` s time to the deadline. A test
    waits for the code under test to go to sleep with :meth:`sleeping` instead of guessing
    how many loop turns it needs."""

    def __init__(self, now: float = 1000.0) -> None:
        self._now = now
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self._slept = asyncio.Condition()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        wake = asyncio.get_running_loop().create_future()
        entry = (deadline, wake)
        self._sleepers.append(entry)
        async with self._slept:
            self._slept.notify_all()
        try:
            await wake
        finally:
            self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        """Moves time on and wakes every sleeper whose deadline has come."""
        self._now += seconds
        for deadline, wake in self._sleepers:
            if deadline <= self._now and not wake.done():
                wake.set_result(None)

    def advance_to(self, moment: float) -> None:
        self.advance(max(moment - self._now, 0.0))

    def deadlines(self) -> list[float]:
        """The deadlines slept until now, earliest first."""
        return sorted(deadline for deadline, wake in self._sleepers if not wake.done())

    async def sleeping(self, until: float | None = None, timeout: float = 5.0) -> list[float]:
        """Waits (bounded, in real time) until something sleeps — until the moment `until`,
        when given; returns the deadlines slept until."""

        def asleep() -> bool:
            deadlines = self.deadlines()
            return bool(deadlines) if until is None else until in deadlines

        async with asyncio.timeout(timeout), self._slept:
            await self._slept.wait_for(asleep)
        return self.deadlines()
