"""Waits: until the first of several things happens, bounded, leaving no task behind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

CLEANUP_TIMEOUT = 1.0
"""How long the helper tasks of a wait may take to end once cancelled."""


async def first_of(awaitables: Sequence[Awaitable[object]], timeout: float) -> set[int]:
    """Waits until one of `awaitables` is done or `timeout` seconds pass, then cancels and
    awaits the others. Returns the indexes of those done (empty after the timeout); raises
    what one of them raised. Cancelling the caller cancels them all."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        done, _ = await asyncio.wait(
            tasks, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in tasks:
            task.cancel()
        # asyncio.wait neither cancels what it waits for nor loses a cancellation of ours.
        await asyncio.wait(tasks, timeout=CLEANUP_TIMEOUT)
    for task in done:
        task.result()
    return {index for index, task in enumerate(tasks) if task in done}


__all__ = ["first_of"]
