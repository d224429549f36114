"""Upkeep: the node's periodic saves of changed state and its deactivation of idle objects."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import gc
import time
from collections.abc import Callable
from datetime import timedelta

import structlog

from goverse.node._object_host import ObjectHost

log = structlog.get_logger(__name__)

MIN_IDLE_CHECK = 0.05
MAX_IDLE_CHECK = 30.0
"""Bounds of the interval between looks for idle objects (a tenth of --idle-timeout)."""
TRIM_AFTER = 1000
"""Objects deactivated since memory was last handed back to the system after which it is
handed back again, however many looks retired them (a wave of deactivations often comes in
looks of a few hundred each)."""
COLLECT_AFTER_WAVE = TRIM_AFTER
"""Objects deactivated since the last full collection after which the first look that retires
none (the wave is over) runs one, then hands memory back again, provided they outnumber the
objects still held: a collection walks every live object, so a node with a large working set
and a trickle of retirements collects once per working set retired, not once per wave."""


@functools.cache
def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl)."""
    # Looked up once, in the symbols the process already has: ctypes.util.find_library runs
    # `ldconfig -p` and parses its output with regular expressions, so each trim allocated
    # (and the `re` cache kept) some of the very memory it was handing back.
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(None), "malloc_trim", None)
    return trim


def _malloc_trim() -> None:
    """Returns free heap memory to the system (glibc keeps it otherwise, and RSS with it)."""
    trim = _find_malloc_trim()
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
    untrimmed = uncollected = 0
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
            untrimmed += retired
            uncollected += retired
            if not retired and uncollected >= max(COLLECT_AFTER_WAVE, host.held_count):
                uncollected = 0
                _collect_after_wave()
            if untrimmed >= TRIM_AFTER:
                untrimmed = 0
                host.compact()
                # Not in this step: the task objects of the retirement are released only
                # once this task has yielded (the loop's handle that resumed it holds their
                # gather), and memory they still hold cannot be handed back.
                await asyncio.sleep(0)
                # No gc.collect() here: a full collection walks every live object, the node's
                # whole loop stalled (250-560 ms for 50,000 objects on this machine, seconds
                # under load, once per TRIM_AFTER retirements of a wave). What the retired
                # objects held is freed by reference counting; the rare cycle waits for the
                # interpreter's own collections, or for the one after the wave.
                _malloc_trim()


def _collect_after_wave() -> None:
    """One full collection once a wave of retirements is over, then memory handed back.

    The collection also empties CPython's free lists (tuples, dicts, floats), whose last
    entries, freed late in the wave, are some of the few blocks that keep the wave's memory
    pages mapped (docs/state.md, "Measured"). With the wave gone, few objects are left to
    walk: tens of milliseconds of the loop, once per wave."""
    started = time.perf_counter()
    found = gc.collect()
    _malloc_trim()
    log.info(
        "memory handed back after a wave of deactivations",
        collected=found,
        duration_ms=round((time.perf_counter() - started) * 1000, 1),
    )


__all__ = ["run_upkeep"]
