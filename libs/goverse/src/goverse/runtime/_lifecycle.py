"""Lifecycle: runs a service until SIGTERM or SIGINT, then stops it once; a second signal exits."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Protocol

import structlog

log = structlog.get_logger(__name__)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_until_signalled(service: Service) -> int:
    """Starts `service`, waits for SIGTERM or SIGINT, stops it and returns the exit code (0).

    A second signal while stopping exits the process at once with 128 + the signal number.
    """
    loop = asyncio.get_running_loop()
    requested = asyncio.Event()

    def on_signal(signum: signal.Signals) -> None:
        if requested.is_set():
            log.warning("second signal, exiting at once", signal=signum.name)
            os._exit(128 + signum.value)
        log.info("shutdown requested", signal=signum.name)
        requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await service.start()
        await requested.wait()
    finally:
        await service.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return 0


def run(service: Service) -> int:
    """Runs `service` on a new event loop (uvloop when installed) until signalled."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_until_signalled(service))
    return uvloop.run(run_until_signalled(service))  # type: ignore[no-any-return]
