"""Stopping the tasks a test owns: cancel, wait with a bound, and say which one did not end."""

from __future__ import annotations

import asyncio
import io
from typing import Any

STOP_TIMEOUT = 10.0
"""How long a cancelled task may take to end; a loaded 2-core machine included."""


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
