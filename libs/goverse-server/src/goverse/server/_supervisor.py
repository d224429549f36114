"""Supervisor: the one owner of every long-lived task of a service, and of their cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class SupervisorClosed(RuntimeError):
    """The supervisor is shutting down and takes no new tasks."""


class Supervisor:
    """Creates, names and holds the background tasks and stream-handler tasks of a service.

    asyncio keeps only weak references to tasks, so nothing in a service is fire-and-forget:
    background loops are started with :meth:`spawn`, and gRPC stream handlers register the task
    that runs them with :meth:`adopt`. Each task leaves the registry by itself when it ends.
    :meth:`shutdown` cancels whatever is left and awaits it with a timeout.

    A *vital* task is one the service cannot serve honestly without (its view of the cluster,
    its store, its upkeep): when one raises, `on_vital_crash` is called with its name and the
    error (a service stops itself then: see ``ServiceApp.fail``), rather than the service
    serving on, healthy by every probe, with that loop gone for good.
    """

    def __init__(
        self, name: str, on_vital_crash: Callable[[str, BaseException], None] | None = None
    ) -> None:
        self._name = name
        self._tasks: dict[asyncio.Task[Any], str] = {}
        self._on_vital_crash = on_vital_crash
        self._closing = False

    @property
    def closing(self) -> bool:
        return self._closing

    def task_names(self) -> list[str]:
        """Names of the tasks alive now, sorted."""
        return sorted(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    def spawn(
        self, name: str, coro: Coroutine[Any, Any, Any], *, vital: bool = False
    ) -> asyncio.Task[Any]:
        """Starts `coro` as a named task owned by this supervisor; `vital`: see the class.

        Raises :class:`SupervisorClosed` (and closes `coro`) once shutdown has begun.
        """
        if self._closing:
            coro.close()
            raise SupervisorClosed(f"{self._name} is shutting down")
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[task] = name
        task.add_done_callback(functools.partial(self._on_done, vital=vital))
        return task

    @contextlib.contextmanager
    def adopt(self, name: str) -> Iterator[asyncio.Task[Any]]:
        """Registers the current task (a gRPC stream handler) for the duration of the block.

        Shutdown cancels an adopted task like a spawned one. Raises :class:`SupervisorClosed`
        once shutdown has begun, so no stream starts after the registry was emptied.
        """
        if self._closing:
            raise SupervisorClosed(f"{self._name} is shutting down")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("adopt() needs a running task")
        self._tasks[task] = name
        try:
            yield task
        finally:
            self._tasks.pop(task, None)

    def _on_done(self, task: asyncio.Task[Any], *, vital: bool) -> None:
        name = self._tasks.pop(task, task.get_name())
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            return
        log.error("task crashed", task=name, vital=vital, exc_info=error)
        if vital and self._on_vital_crash is not None:
            self._on_vital_crash(name, error)

    async def wait(self, tasks: list[asyncio.Task[Any]], timeout: float) -> None:
        """Waits up to `timeout` seconds for `tasks` to end by themselves; cancels nothing."""
        if tasks and timeout > 0:
            await asyncio.wait(tasks, timeout=timeout)

    def tasks_named(self, prefix: str) -> list[asyncio.Task[Any]]:
        return [task for task, name in self._tasks.items() if name.startswith(prefix)]

    async def shutdown(self, timeout: float) -> list[str]:
        """Cancels every task and awaits them for up to `timeout` seconds.

        Returns the names of the tasks still pending after the timeout (empty when all ended).
        Takes no new tasks from the first call on; a second call cancels and awaits what is left.
        """
        self._closing = True
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if not tasks:
            return []
        _, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.0))
        return sorted(self._tasks.get(task, task.get_name()) for task in pending)
