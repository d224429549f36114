"""Call load for tests: clients calling counters at a steady pace, every call timed and kept."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from goverse.client import CallError, Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.tasks import bounded, cancel_and_wait


@dataclass(frozen=True)
class CallRecord:
    """One call: when it started (monotonic), how long it took, which object, its error."""

    started: float
    seconds: float
    object_id: str
    error: str | None = None


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` 0.99: p99) of `values`; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


class CallLoad:
    """`clients` call ``Counter.Increment`` round-robin over `object_ids` (each client its own
    turn through them), each at most once per `interval` seconds, until :meth:`stop`.

    A call waits up to `timeout` (its deadline: calls to a moving shard are held by the gate
    within it). Every call is recorded, failed ones with their status, so a test can assert
    that none failed and measure what the calls saw in a time window.
    """

    def __init__(
        self,
        clients: Sequence[Client],
        object_ids: Sequence[str],
        interval: float = 0.02,
        timeout: float = 20.0,
    ) -> None:
        self._clients = list(clients)
        self._ids = list(object_ids)
        self._interval = interval
        self._timeout = timeout
        self.records: list[CallRecord] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def start(self) -> CallLoad:
        self._tasks = [
            asyncio.create_task(self._calls(client, offset), name=f"call-load-{offset}")
            for offset, client in enumerate(self._clients)
        ]
        return self

    async def _calls(self, client: Client, offset: int) -> None:
        turn = offset
        next_at = time.monotonic()
        while not self._stopping.is_set():
            object_id = self._ids[turn % len(self._ids)]
            turn += 1
            started = time.monotonic()
            error = None
            try:
                await client.call(
                    "Counter",
                    object_id,
                    "Increment",
                    IncrementRequest(by=1),
                    CounterValue,
                    timeout=self._timeout,
                )
            except CallError as failure:
                error = f"{failure.code.name}: {failure}"
            ended = time.monotonic()
            self.records.append(CallRecord(started, ended - started, object_id, error))
            next_at = max(next_at + self._interval, ended)
            # A pace, not a wait for a condition: the load is a call per interval per client.
            with contextlib.suppress(TimeoutError):
                await bounded(self._stopping.wait(), max(next_at - ended, 0))

    async def made(self, count: int, timeout: float) -> None:
        """Waits (bounded) until `count` calls have completed."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.records)} calls within {timeout:.0f}s")
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        """Lets each client finish its call in flight (bounded by the call timeout), then
        ends; a client still calling after that is cancelled."""
        self._stopping.set()
        for task in self._tasks:
            try:
                await bounded(asyncio.shield(task), self._timeout + 5)
            except TimeoutError:
                await cancel_and_wait(task)

    def failed(self) -> list[CallRecord]:
        return [record for record in self.records if record.error is not None]

    def seconds(
        self, start: float, end: float, objects: Iterable[str] | None = None
    ) -> list[float]:
        """Durations of the calls that started in ``[start, end)``, to `objects` only when
        given."""
        chosen = None if objects is None else set(objects)
        return [
            record.seconds
            for record in self.records
            if start <= record.started < end and (chosen is None or record.object_id in chosen)
        ]
