"""Supervisor: owns named tasks, cancels and awaits them, reports what outlived the timeout."""

from __future__ import annotations

import asyncio

import pytest

from goverse.server import Supervisor, SupervisorClosed
from tests.helpers.tasks import bounded


async def test_spawned_tasks_are_named_and_leave_when_done() -> None:
    sup = Supervisor("test")
    done = asyncio.Event()
    task = sup.spawn("worker", done.wait())
    assert sup.task_names() == ["worker"]
    done.set()
    await task
    await asyncio.sleep(0)
    assert sup.task_names() == []


async def test_shutdown_cancels_and_awaits_everything() -> None:
    """After shutdown no task created through the supervisor is left."""
    before = len(asyncio.all_tasks())
    sup = Supervisor("test")
    for i in range(10):
        sup.spawn(f"sleeper-{i}", asyncio.sleep(3600))
    assert await sup.shutdown(5) == []
    assert len(sup) == 0
    assert len(asyncio.all_tasks()) == before


async def test_shutdown_reports_tasks_that_ignore_cancellation() -> None:
    sup = Supervisor("test")
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # misbehaving on purpose: this is what the report is for

    task = sup.spawn("stubborn", stubborn())
    await asyncio.sleep(0)
    assert await sup.shutdown(0.05) == ["stubborn"]
    release.set()
    await bounded(task, 5)


async def test_no_new_tasks_after_shutdown_and_shutdown_twice_is_safe() -> None:
    sup = Supervisor("test")
    await sup.shutdown(1)
    coro = asyncio.sleep(1)
    with pytest.raises(SupervisorClosed):
        sup.spawn("late", coro)
    assert await sup.shutdown(1) == []


async def test_adopt_registers_the_current_task_for_the_block() -> None:
    sup = Supervisor("test")
    inside = asyncio.Event()
    leave = asyncio.Event()

    async def handler() -> None:
        with sup.adopt("stream:1"):
            inside.set()
            await leave.wait()

    task = asyncio.create_task(handler())
    await inside.wait()
    assert sup.task_names() == ["stream:1"]
    leave.set()
    await task
    assert sup.task_names() == []


async def test_adopted_task_is_cancelled_by_shutdown() -> None:
    sup = Supervisor("test")
    inside = asyncio.Event()

    async def handler() -> None:
        with sup.adopt("stream:1"):
            inside.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(handler())
    await inside.wait()
    assert await sup.shutdown(5) == []
    assert task.cancelled()


async def test_a_vital_task_that_raises_is_reported_and_others_are_only_logged() -> None:
    """A service cannot serve honestly without its vital loops (its view, its store): the
    crash of one is reported, so the service stops itself. Any other task's crash, a vital
    task's cancellation or its normal end are not."""
    crashes: list[tuple[str, str]] = []
    sup = Supervisor("test", on_vital_crash=lambda name, error: crashes.append((name, str(error))))

    async def crash(message: str) -> None:
        raise RuntimeError(message)

    tasks = [
        sup.spawn("view", crash("the view broke"), vital=True),
        sup.spawn("stream", crash("a stream broke")),
        sup.spawn("store", asyncio.sleep(0), vital=True),
    ]
    cancelled = sup.spawn("upkeep", asyncio.sleep(3600), vital=True)
    cancelled.cancel()
    await bounded(asyncio.wait([*tasks, cancelled]), 5.0)
    await asyncio.sleep(0)  # done callbacks run in the turn after a task ends
    assert crashes == [("view", "the view broke")]
    assert sup.task_names() == []
