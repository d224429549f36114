"""cancel_and_wait: a task the test owns is stopped within a bound, or the test says which."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers.tasks import cancel_and_wait


async def test_cancel_and_wait_returns_once_the_task_has_ended_cancelled() -> None:
    """A task that honours its cancellation is cancelled and awaited."""
    task = asyncio.create_task(asyncio.Event().wait(), name="waiter")
    await cancel_and_wait(task, timeout=10)
    assert task.cancelled()


async def test_cancel_and_wait_fails_naming_a_task_that_ignores_its_cancellation() -> None:
    """A task that swallows its cancellation and goes on fails the test within the bound,
    with its name and where it is, instead of hanging."""
    started, release = asyncio.Event(), asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # misbehaving on purpose: this is what the failure is for

    task = asyncio.create_task(stubborn(), name="stubborn loop")
    async with asyncio.timeout(10):
        await started.wait()  # so the cancellation reaches its wait, not its first step
    with pytest.raises(AssertionError, match=r"'stubborn loop' did not end within 0.1s"):
        await cancel_and_wait(task, timeout=0.1)
    release.set()
    async with asyncio.timeout(10):
        await task


async def test_cancel_and_wait_raises_what_the_task_ended_with() -> None:
    """A task that turns its cancellation into an error has that error raised to the owner."""

    started = asyncio.Event()

    async def fails_on_cancel() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_on_cancel())
    async with asyncio.timeout(10):
        await started.wait()  # so the cancellation reaches its wait, not its first step
    with pytest.raises(RuntimeError, match="cleanup failed"):
        await cancel_and_wait(task, timeout=10)
