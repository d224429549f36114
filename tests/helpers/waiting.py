"""Waiting for a condition, bounded: the async `eventually` and the sync `wait_until`."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


async def eventually(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "", interval: float = 0.01
) -> None:
    """Waits until `predicate()` is truthy, checking every `interval` seconds without blocking
    the loop; fails the test after `timeout` seconds, naming `what` it waited for.
    `predicate` may be a coroutine function (``lambda: node_lists_it()``): its result is
    awaited."""
    deadline = time.monotonic() + timeout
    while True:
        holds = predicate()
        if inspect.isawaitable(holds):
            holds = await holds
        if holds:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    """Polls `predicate()` until it is truthy, sleeping `interval` seconds in between (blocks
    the thread: from async code, run it with ``asyncio.to_thread``); fails the test after
    `timeout` seconds, naming `what` it waited for."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)
