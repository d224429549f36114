"""CallsInFlight: the calls a stop waits for, counted once each until they end."""

from __future__ import annotations

import asyncio

from goverse.server import CallsInFlight


async def test_a_task_tracked_twice_counts_once_and_leaves_when_it_ends() -> None:
    calls = CallsInFlight(())
    release = asyncio.Event()
    task = asyncio.get_running_loop().create_task(release.wait())
    calls.track(task)
    calls.track(task)
    assert len(calls) == 1
    release.set()
    assert await calls.wait(timeout=5) == 0
    assert len(calls) == 0


async def test_wait_returns_how_many_are_still_running() -> None:
    calls = CallsInFlight(())
    task = asyncio.get_running_loop().create_task(asyncio.Event().wait())
    calls.track(task)
    assert await calls.wait(timeout=0.01) == 1
    task.cancel()
    assert await calls.wait(timeout=5) == 0
