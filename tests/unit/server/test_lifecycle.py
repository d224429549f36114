"""run_until_signalled: what it does around a service's start and end."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from goverse.server._lifecycle import GC_THRESHOLDS, run_until_signalled


class _FailsOnceStarted:
    """A service that ends by itself right after starting, noting the collector's state then."""

    def __init__(self) -> None:
        self.frozen_when_running = -1
        self.thresholds_when_running: tuple[int, ...] = ()
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def failed(self) -> BaseException:
        self.frozen_when_running = gc.get_freeze_count()
        self.thresholds_when_running = gc.get_threshold()
        return RuntimeError("ended by itself")


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    """run_until_signalled freezes objects and sets thresholds for the whole process."""
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


async def test_what_a_started_service_made_is_frozen_out_of_the_collector() -> None:
    """Full collections would walk every object of the start again and again, with the loop
    stopped: once started, they are frozen."""
    service = _FailsOnceStarted()
    with pytest.raises(RuntimeError, match="ended by itself"):
        await run_until_signalled(service)
    assert service.frozen_when_running > 0
    assert service.stopped


async def test_a_serving_service_collects_young_objects_less_often() -> None:
    """Young collections walk every waiting stream's coroutines again: a serving service raises
    the collector's thresholds (see GC_THRESHOLDS)."""
    service = _FailsOnceStarted()
    with pytest.raises(RuntimeError, match="ended by itself"):
        await run_until_signalled(service)
    assert service.thresholds_when_running == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # CPython's default
