"""Call load for tests: clients calling objects in a loop through the gates, every call kept."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.empty_pb2 import Empty
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import Int64Value

from goverse.client import CallError, Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.tasks import STOP_TIMEOUT, cancel_and_wait

CALL_TIMEOUT = 10.0
"""Each call's deadline: above a crashed node's TTL plus its reclaim, so that a call that
waits through a crash window can still succeed."""
PAUSE = 0.02
"""Seconds a client waits between two calls: about 8 x 40 calls a second in all, load enough
to hit every moving shard while leaving the 2 shared cores to the processes under test."""


@dataclass(frozen=True)
class Method:
    """What every call of a load calls: `name` of `object_type` with `request`, answered with
    a `response`; `served_by` reads from the answer the pid of the node process that served
    it (None: the answer does not say)."""

    object_type: str
    name: str
    request: Message
    response: type[Message]
    served_by: Callable[[Any], int] | None = None


TOUCH = Method("Witness", "Touch", Empty(), Int64Value, lambda reply: int(reply.value))
"""``Witness.Touch``: recorded by the node for the one-activation check; answers its pid."""
INCREMENT = Method("Counter", "Increment", IncrementRequest(by=1), CounterValue)
"""``Counter.Increment`` by one, on the example counter every node hosts."""


@dataclass(frozen=True)
class Outcome:
    """One call: who made it, to which object, when (wall clock, to compare with log lines and
    Witness records), how it ended, and the pid of the node process that served it (0 when it
    failed or the method does not say)."""

    client: int
    object_id: str
    started: float
    ended: float
    code: str
    """``OK`` or the gRPC status code's name."""
    pid: int
    detail: str = ""
    reply: Message | None = None
    """The answer of a call that succeeded."""

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def latency(self) -> float:
        return self.ended - self.started


class CallLoad:
    """`clients` SDK clients, each calling `method` (:data:`TOUCH` unless told) on
    `object_ids` in a loop (client *i* starts at its own offset, so the clients spread over
    the objects and sometimes call the same one together), pausing `pause` seconds in between.
    With `own_ids`, client *i* calls only every `clients`-th id from the *i*-th on, so that
    each object has one caller and its calls never overlap. Each client knows every gate in
    `gates`, or with `one_gate_each` only gate ``i % len`` (so that the load reaches every
    gate). A call waits up to `timeout` (its deadline: calls
    to a moving shard are held by the gate within it). Every call's :class:`Outcome` goes to
    :attr:`outcomes`, so a test can assert that none failed and measure what the calls saw
    in a time window.

    :meth:`start` connects the clients and starts the loops; :meth:`stop` lets each loop
    finish its call in flight (bounded by the call timeout), then closes the clients. Use it as
    an async context manager to always stop it.
    """

    def __init__(
        self,
        gates: Sequence[str],
        object_ids: Sequence[str],
        *,
        clients: int = 8,
        method: Method = TOUCH,
        timeout: float = CALL_TIMEOUT,
        pause: float = PAUSE,
        one_gate_each: bool = False,
        own_ids: bool = False,
        **options: Any,
    ) -> None:
        self._gates = list(gates)
        self._ids = list(object_ids)
        self._count = clients
        self._method = method
        self._timeout = timeout
        self._pause = pause
        self._one_gate_each = one_gate_each
        self._own_ids = own_ids
        self._options = options
        self.clients: list[Client] = []
        self.outcomes: list[Outcome] = []
        self._loops: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._progress = asyncio.Condition()
        self._running = asyncio.Event()
        self._running.set()
        self._calling = 0
        """Loops in the middle of a call."""

    async def __aenter__(self) -> CallLoad:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> CallLoad:
        for index in range(self._count):
            gates = [self._gates[index % len(self._gates)]] if self._one_gate_each else self._gates
            client = Client(gates, **self._options)
            self.clients.append(client)
            await client.connect()
        step = max(len(self._ids) // self._count, 1)
        self._loops = [
            asyncio.create_task(
                self._loop(index, client, self._share(index, step)), name=f"caller-{index}"
            )
            for index, client in enumerate(self.clients)
        ]
        return self

    async def stop(self) -> None:
        """Stops the loops after their call in flight, then closes the clients; idempotent."""
        self._stopping.set()
        self._running.set()  # a paused loop sees the stop
        if self._loops:
            _, pending = await asyncio.wait(self._loops, timeout=self._timeout + STOP_TIMEOUT)
            for task in pending:
                await cancel_and_wait(task)
            for task in self._loops:
                if not task.cancelled():
                    task.result()  # a crashed loop is a bug of this helper: say so
        for client in self.clients:
            async with asyncio.timeout(STOP_TIMEOUT):
                await client.close()

    async def pause(self) -> None:
        """Stops starting calls and waits until no call is in flight (each ends by its
        deadline): for a fault that must not land in the middle of a call; :meth:`resume`
        starts them again."""
        self._running.clear()
        async with asyncio.timeout(self._timeout + STOP_TIMEOUT), self._progress:
            await self._progress.wait_for(lambda: self._calling == 0)

    def resume(self) -> None:
        self._running.set()

    def _share(self, index: int, step: int) -> list[str]:
        """The ids client `index` calls, in its order."""
        if self._own_ids:
            return self._ids[index :: self._count]
        offset = index * step
        return self._ids[offset:] + self._ids[:offset]

    async def _loop(self, index: int, client: Client, ids: list[str]) -> None:
        method = self._method
        if not ids:
            raise ValueError(f"client {index} has no object to call")
        for object_id in itertools.cycle(ids):
            await self._running.wait()
            if self._stopping.is_set():
                return
            started = time.time()
            self._calling += 1
            try:
                reply = await client.call(
                    method.object_type,
                    object_id,
                    method.name,
                    method.request,
                    method.response,
                    timeout=self._timeout,
                )
            except CallError as error:
                outcome = Outcome(
                    index, object_id, started, time.time(), error.status_code.name, 0, error.message
                )
            else:
                pid = 0 if method.served_by is None else method.served_by(reply)
                outcome = Outcome(index, object_id, started, time.time(), "OK", pid, reply=reply)
            finally:
                self._calling -= 1
            self.outcomes.append(outcome)
            async with self._progress:
                self._progress.notify_all()
            await asyncio.sleep(self._pause)  # pacing, not waiting for anything

    async def until(
        self, predicate: Callable[[list[Outcome]], object], timeout: float, what: str
    ) -> None:
        """Waits until `predicate(outcomes)` holds, checked after each call ends; fails the
        test after `timeout` seconds naming `what`."""
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(lambda: bool(predicate(self.outcomes)))
        except TimeoutError:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    async def calls(self, count: int, timeout: float = 30.0) -> None:
        """Waits until `count` more calls have ended."""
        target = len(self.outcomes) + count
        await self.until(lambda done: len(done) >= target, timeout, f"{count} more calls")

    def between(
        self, start: float, end: float, objects: Iterable[str] | None = None
    ) -> list[Outcome]:
        """The calls that started in [start, end), to `objects` only when given."""
        chosen = None if objects is None else set(objects)
        return [
            o
            for o in self.outcomes
            if start <= o.started < end and (chosen is None or o.object_id in chosen)
        ]

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def served_by(self, before: float) -> dict[str, int]:
        """For each object, the pid of the node that served its last call ended before
        `before` (with a method that says it: :data:`TOUCH`)."""
        served: dict[str, int] = {}
        for outcome in sorted(self.outcomes, key=lambda o: o.ended):
            if outcome.ok and outcome.ended < before:
                served[outcome.object_id] = outcome.pid
        return served


def codes(outcomes: list[Outcome]) -> dict[str, int]:
    """How many of `outcomes` ended with each status code (``OK`` included)."""
    found: dict[str, int] = {}
    for outcome in outcomes:
        found[outcome.code] = found.get(outcome.code, 0) + 1
    return found


def percentile(values: Sequence[float], share: float) -> float:
    """The `share` percentile (0..1: 0.99 is p99) of `values`, nearest rank; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def object_ids(prefix: str, count: int, where: Callable[[str], object] | None = None) -> list[str]:
    """The first `count` of the ids ``<prefix>-0``, ``<prefix>-1`` … that `where` accepts
    (every one when None): ``where=lambda i: placement.node_for("Counter", i) == node`` picks
    ids a node owns."""
    candidates = (f"{prefix}-{n}" for n in itertools.count())
    return list(itertools.islice((i for i in candidates if where is None or where(i)), count))


__all__ = [
    "CALL_TIMEOUT",
    "INCREMENT",
    "TOUCH",
    "CallLoad",
    "Method",
    "Outcome",
    "codes",
    "object_ids",
    "percentile",
]
