"""Upkeep: memory handed back during a wave of retirements, one full collection after it."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import cast

import pytest

from goverse.node import _upkeep
from goverse.node._object_host import ObjectHost
from tests.helpers.tasks import bounded, cancel_and_wait

WAIT = 5.0
IDLE = timedelta(seconds=0.5)
"""Looks every 50 ms (a tenth of the idle timeout, at least MIN_IDLE_CHECK)."""


class ScriptedHost:
    """Retires what each look of the script says; `looked` is set once the script is over
    (every scripted look has been handled by then: the upkeep looks again only after)."""

    def __init__(self, looks: list[int], held: int = 0) -> None:
        self._looks = list(looks)
        self.held_count = held
        self.compacted = 0
        self.looked = asyncio.Event()

    async def save_changed(self) -> int:
        return 0

    async def deactivate_idle(self, idle: float) -> int:
        if not self._looks:
            self.looked.set()
            return 0
        return self._looks.pop(0)

    def compact(self) -> None:
        self.compacted += 1


async def run_script(
    monkeypatch: pytest.MonkeyPatch, looks: list[int], held: int = 0
) -> tuple[list[str], ScriptedHost]:
    """Runs the upkeep over `looks`; what it did, in order: ``trim`` and ``collect``."""
    done: list[str] = []
    monkeypatch.setattr(_upkeep, "_malloc_trim", lambda: done.append("trim"))
    monkeypatch.setattr(_upkeep, "_collect_after_wave", lambda: done.append("collect"))
    host = ScriptedHost(looks, held)
    upkeep = asyncio.create_task(
        _upkeep.run_upkeep(cast(ObjectHost, host), timedelta(minutes=5), IDLE)
    )
    try:
        await bounded(host.looked.wait(), WAIT)
    finally:
        await cancel_and_wait(upkeep)
    return done, host


async def test_a_wave_is_trimmed_as_it_goes_and_collected_once_when_it_is_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    done, host = await run_script(monkeypatch, [600, 600, 600, 0, 0, 300, 0])
    # 1,200 retired: trimmed (and the host's tables compacted); the first look that retires
    # nothing collects once; the later small wave (300 < COLLECT_AFTER_WAVE) does not.
    assert done == ["trim", "collect"]
    assert host.compacted == 1


async def test_no_collection_while_more_objects_are_held_than_the_wave_retired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A large working set with retirements around it: a collection would walk all of it.
    done, _ = await run_script(monkeypatch, [600, 600, 0, 0], held=5_000)
    assert done == ["trim"]
