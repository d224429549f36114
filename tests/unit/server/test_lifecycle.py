"""run_until_signalled: what it does around a service's start and end."""

from __future__ import annotations

import gc

import pytest

from goverse.server._lifecycle import run_until_signalled


class _FailsOnceStarted:
    """A service that ends by itself right after starting, noting the collector's state then."""

    def __init__(self) -> None:
        self.frozen_when_running = -1
        self.stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def failed(self) -> BaseException:
        self.frozen_when_running = gc.get_freeze_count()
        return RuntimeError("ended by itself")


async def test_what_a_started_service_made_is_frozen_out_of_the_collector() -> None:
    """Full collections would walk every object of the start again and again, with the loop
    stopped: once started, they are frozen."""
    service = _FailsOnceStarted()
    gc.unfreeze()
    try:
        with pytest.raises(RuntimeError, match="ended by itself"):
            await run_until_signalled(service)
    finally:
        gc.unfreeze()
    assert service.frozen_when_running > 0
    assert service.stopped
