"""Calls in flight: the calls a server is serving, so that a stop can let them finish."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import grpc

from goverse._tracing import method_of


class CallsInFlight:
    """Tracks the task of every unary call to `services` while its handler runs, and of
    every call a call stream serves (:meth:`track`).

    :attr:`interceptor` goes on the server; each call registers its own task when its handler
    starts and removes itself when it ends, whichever way. :meth:`wait` waits for what is
    left. Nothing is cancelled here: a call still running when the server stops is ended by
    the server's grace.
    """

    def __init__(self, services: Iterable[str]) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.interceptor: grpc.aio.ServerInterceptor = _TrackCalls(
            tuple(f"/{service}/" for service in services), self._tasks
        )

    def __len__(self) -> int:
        return len(self._tasks)

    def track(self, task: asyncio.Task[Any]) -> None:
        """Counts `task` (a call served from a call stream, owned by that stream) in flight
        until it ends; tracking a task already counted changes nothing."""
        if task in self._tasks:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self, timeout: float) -> int:
        """Waits up to `timeout` seconds for the calls in flight to end; returns how many are
        still running."""
        tasks = list(self._tasks)
        if tasks and timeout > 0:
            await asyncio.wait(tasks, timeout=timeout)
        return len(self._tasks)


class _TrackCalls(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, prefixes: tuple[str, ...], tasks: set[asyncio.Task[Any]]) -> None:
        self._prefixes = prefixes
        self._tasks = tasks

    async def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = await continuation(handler_call_details)
        if (
            handler is None
            or handler.unary_unary is None
            or not method_of(handler_call_details).startswith(self._prefixes)
        ):
            return handler
        behavior, tasks = handler.unary_unary, self._tasks

        async def tracked(request: Any, context: Any) -> Any:
            task = asyncio.current_task()
            assert task is not None  # a handler always runs in a task
            tasks.add(task)
            try:
                return await behavior(request, context)
            finally:
                tasks.discard(task)

        return handler._replace(unary_unary=tracked)


__all__ = ["CallsInFlight"]
