"""Objects the benchmarks host on real nodes (``goverse-node --objects bench.objects``).

* ``Echo.Echo`` returns its request: the trivial method of the call scenario.
* ``Pusher.Burst`` pushes N stamped messages to its caller as fast as it can, backing off
  briefly whenever ``push()`` returns 0 (the node's queue for the gate is full), so nothing is
  dropped on the node; ``Pusher.PushOne`` pushes one.
* ``Broadcaster.Broadcast`` broadcasts one stamped message to every client of every gate.
* ``Relay.Forward`` calls ``Echo.Echo`` of the object its request names and answers with the
  echo: an object-to-object call, on the same node or across nodes (scenario 9).
* ``Counter.Increment`` and ``PeriodicCounter.Increment`` add to a stored integer: the
  stateful objects of the state scenario, saved after every call (each-call durability) or
  every ``--save-interval``.
"""

from __future__ import annotations

import asyncio
import time

from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue

from bench import wire
from goverse.examples.v1.counter_pb2 import CounterState, CounterValue, IncrementRequest
from goverse.objects import Durability, Object, Stateful

MAX_BURST = 10_000_000
MAX_BURST_SECONDS = 300.0


class Echo(Object):
    """Answers with its request."""

    async def Echo(self, request: BytesValue) -> BytesValue:
        return request


class Relay(Object):
    """Calls another object and answers with its reply."""

    async def Forward(self, request: StringValue) -> BytesValue:
        """Calls ``Echo.Echo`` of the id ``target`` with ``payload`` bytes."""
        args = wire.read_params(request)
        payload = BytesValue(value=b"x" * min(int(args.get("payload", 64)), 1 << 20))
        return await self.call_object("Echo", str(args["target"]), "Echo", payload, BytesValue)


class Pusher(Object):
    """Pushes stamped messages to the calling client."""

    async def Burst(self, request: StringValue) -> StringValue:
        """Pushes ``count`` messages of ``payload`` bytes to the caller.

        Yields to the event loop every ``yield_every`` accepted pushes (so the gate stream
        writer can send them in batches); on a full queue waits ``backoff_ms`` and retries the
        same message. With ``rate`` > 0, pushes one message every 1/rate seconds instead of as
        fast as it can. Gives up after ``max_seconds``. Answers ``{"sent", "backoffs",
        "seconds"}``.
        """
        args = wire.read_params(request)
        count = min(int(args.get("count", 1000)), MAX_BURST)
        payload = int(args.get("payload", 64))
        yield_every = max(int(args.get("yield_every", 32)), 1)
        backoff = max(float(args.get("backoff_ms", 1.0)), 0.0) / 1000
        max_seconds = min(float(args.get("max_seconds", 60.0)), MAX_BURST_SECONDS)
        rate = float(args.get("rate", 0.0))
        interval = 1 / rate if rate > 0 else 0.0
        target = self.caller.client_id
        started = time.monotonic()
        deadline = started + max_seconds
        sent = backoffs = 0
        due = started
        while sent < count:
            if self.push(target, wire.stamped(sent, payload)) == 1:
                sent += 1
                if interval:
                    due += interval
                    await asyncio.sleep(max(due - time.monotonic(), 0.0))
                elif sent % yield_every == 0:
                    await asyncio.sleep(0)
                continue
            backoffs += 1
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(backoff)
        seconds = time.monotonic() - started
        return wire.params(sent=sent, backoffs=backoffs, seconds=seconds)

    async def PushOne(self, request: Int64Value) -> Int64Value:
        """Pushes one message with sequence number ``request.value``; answers 1 if queued."""
        return Int64Value(value=self.push(self.caller.client_id, wire.stamped(request.value, 64)))


class Broadcaster(Object):
    """Broadcasts stamped messages."""

    async def Broadcast(self, request: StringValue) -> Int64Value:
        """Broadcasts one message ``{"seq", "payload"}``; answers how many gates took it."""
        args = wire.read_params(request)
        message = wire.stamped(int(args.get("seq", 0)), int(args.get("payload", 64)))
        return Int64Value(value=self.broadcast(message))


class Counter(Stateful[CounterState]):
    """An integer saved before every reply (each-call durability), as the demo's Counter."""

    durability = Durability.EACH_CALL

    async def Increment(self, request: IncrementRequest) -> CounterValue:
        self.state.value += request.by
        return CounterValue(value=self.state.value)


class PeriodicCounter(Counter):
    """A :class:`Counter` saved every ``--save-interval`` and when it deactivates."""

    durability = Durability.PERIODIC
