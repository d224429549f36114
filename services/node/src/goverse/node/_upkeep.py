"""Upkeep: the node's periodic saves of changed state and its deactivation of idle objects."""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from datetime import timedelta

import structlog

from goverse.node._object_host import ObjectHost

log = structlog.get_logger(__name__)

MIN_IDLE_CHECK = 0.05
MAX_IDLE_CHECK = 30.0
"""Bounds of the interval between looks for idle objects (a tenth of --idle-timeout)."""
TRIM_AFTER = 1000
"""Objects deactivated at once after which freed memory is handed back to the system."""


def _malloc_trim() -> None:
    """Returns free heap memory to the system (glibc keeps it otherwise, and RSS with it)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


async def run_upkeep(host: ObjectHost, save_interval: timedelta, idle_timeout: timedelta) -> None:
    """Saves periodic objects' changes every `save_interval` and retires objects idle for
    `idle_timeout` (0: never); runs until cancelled, as the node's ``upkeep`` task."""
    save_every = save_interval.total_seconds()
    idle = idle_timeout.total_seconds()
    tick = save_every
    if idle > 0:
        tick = min(tick, max(MIN_IDLE_CHECK, min(idle / 10, MAX_IDLE_CHECK)))
    next_save = time.monotonic() + save_every
    while True:
        await asyncio.sleep(tick)
        if time.monotonic() >= next_save:
            next_save = time.monotonic() + save_every
            saved = await host.save_changed()
            if saved:
                log.debug("changed state saved", objects=saved)
        if idle > 0:
            retired = await host.deactivate_idle(idle)
            if retired:
                log.info("idle objects deactivated", objects=retired, idle_s=idle)
            if retired >= TRIM_AFTER:
                gc.collect()
                _malloc_trim()


__all__ = ["run_upkeep"]
