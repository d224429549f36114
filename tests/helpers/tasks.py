"""Tasks a test owns: awaiting with a bound, stopping them and saying which did not end."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

STOP_TIMEOUT = 10.0
"""How long a cancelled task may take to end; a loaded 2-core machine included."""


async def bounded(awaitable: Awaitable[T], timeout: float) -> T:
    """Awaits `awaitable` for at most `timeout` seconds (then TimeoutError, and a task or
    future awaited is cancelled): ``asyncio.wait_for`` built on ``asyncio.timeout``. On Python
    3.11 wait_for returns the result and drops a cancellation that arrives in the tick the
    result does (CPython gh-86296), which hung a fixture teardown (issue 9)."""
    async with asyncio.timeout(timeout):
        return await awaitable


async def cancel_and_wait(task: asyncio.Task[Any], timeout: float = STOP_TIMEOUT) -> None:
    """Cancels `task`, which the calling test or fixture owns, and waits up to `timeout`
    seconds for it to end.

    Returns when the task ended cancelled or returned; raises the exception it ended with
    otherwise. A task still running after `timeout` (it swallowed its cancellation and went
    on) fails the test with the task's name and stack instead of hanging the teardown until
    pytest-timeout.
    """
    task.cancel()
    # asyncio.wait never cancels what it waits for, nor loses our own cancellation.
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        stack = io.StringIO()
        task.print_stack(limit=5, file=stack)
        raise AssertionError(
            f"task {task.get_name()!r} did not end within {timeout}s of being cancelled "
            f"(it swallowed the cancellation?):\n{stack.getvalue()}"
        )
    if not task.cancelled():
        task.result()
