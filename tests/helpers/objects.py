"""Objects that tests host on real nodes (``--objects tests.helpers.objects``)."""

from __future__ import annotations

import asyncio
import json
import os
import time

from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.examples.v1.counter_pb2 import CounterState, CounterValue, IncrementRequest
from goverse.objects import Durability, Object, Stateful

WITNESS_DIR = "GOVERSE_TEST_WITNESS_DIR"
"""The environment variable naming the directory where :class:`Witness` objects record what
their node did with them; unset, they record nothing."""


class Relay(Object):
    """Calls other objects, to test object-to-object calls across nodes."""

    async def IncrementCounter(self, request: StringValue) -> CounterValue:
        """Increments the Counter whose id is `request.value` by one."""
        return await self.call_object(
            "Counter", request.value, "Increment", IncrementRequest(by=1), CounterValue
        )

    async def CallSelf(self, request: Empty) -> Empty:
        return await self.call_object("Relay", self.id, "CallSelf", request, Empty)


class Pusher(Object):
    """Pushes to clients on request."""

    async def PushTo(self, request: StringValue) -> Int64Value:
        """Pushes StringValue(self.id) to the comma-separated client ids in `request.value`."""
        ids = [item for item in request.value.split(",") if item]
        return Int64Value(value=self.push(ids, StringValue(value=self.id)))

    async def PushToCaller(self, request: StringValue) -> Int64Value:
        """Pushes `request` back to the calling client."""
        return Int64Value(value=self.push(self.caller.client_id, request))

    async def Broadcast(self, request: StringValue) -> Int64Value:
        return Int64Value(value=self.broadcast(request))

    async def WhoAmI(self, request: Empty) -> StringValue:
        return StringValue(value=self.caller.client_id)

    async def PushMany(self, request: Int64Value) -> Int64Value:
        """Pushes StringValue(str(i)) to the caller `request.value` times in one turn (to fill
        queues); returns how many were queued."""
        queued = 0
        for index in range(request.value):
            queued += self.push(self.caller.client_id, StringValue(value=str(index)))
        return Int64Value(value=queued)


class Sleeper(Object):
    """Sleeps inside a call, to test turn-based execution and calls in flight."""

    def __init__(self) -> None:
        self.running = 0
        self.max_running = 0

    async def Sleep(self, request: Int64Value) -> Int64Value:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            await asyncio.sleep(request.value / 1000)
        finally:
            self.running -= 1
        return Int64Value(value=self.max_running)


class Patient(Object):
    """Waits inside a call and counts the calls that started and those cancelled, to test
    deadlines and cancellation of calls in flight."""

    def __init__(self) -> None:
        self.started = 0
        self.cancelled = 0

    async def Wait(self, request: Int64Value) -> Int64Value:
        """Waits `request.value` milliseconds; answers how many Wait calls started."""
        self.started += 1
        try:
            await asyncio.sleep(request.value / 1000)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Int64Value(value=self.started)

    async def Started(self, request: Empty) -> Int64Value:
        return Int64Value(value=self.started)

    async def Cancelled(self, request: Empty) -> Int64Value:
        return Int64Value(value=self.cancelled)


class Failing(Object):
    """Raises from a method, to test what the caller sees."""

    async def Raise(self, request: Empty) -> Empty:
        raise ValueError("this object always fails")


class Witness(Object):
    """Records every activation, deactivation and call in ``$GOVERSE_TEST_WITNESS_DIR``, one
    JSON line each, for :mod:`tests.helpers.witness` to check that no two nodes ever held the
    same object at overlapping times.

    Each node process writes its own file, ``witness-<pid>.jsonl``, with one unbuffered
    ``write`` per line: a line written is on disk even when the process is killed next. A
    line holds the event, the object id, the pid and the time twice: ``wall`` (``time.time``,
    to compare with the nodes' log lines) and ``mono_ns`` (``CLOCK_MONOTONIC``, system-wide on
    Linux: comparable between the processes of one machine, and never stepped).
    """

    async def on_activate(self) -> None:
        _witness("activate", self.id)

    async def on_deactivate(self) -> None:
        _witness("deactivate", self.id)

    async def Touch(self, request: Empty) -> Int64Value:
        """Records the call; answers the pid of the node process that served it."""
        _witness("call", self.id)
        return Int64Value(value=os.getpid())

    async def Hold(self, request: Int64Value) -> Int64Value:
        """Records the call, then keeps it in flight for `request.value` milliseconds;
        answers the pid of the node process that served it."""
        _witness("call", self.id)
        await asyncio.sleep(request.value / 1000)
        return Int64Value(value=os.getpid())


class Ledger(Stateful[CounterState]):
    """A counter saved after every call (each-call durability), that can hold a call in flight
    between its change and its save, and that records its life like :class:`Witness`."""

    async def on_activate(self) -> None:
        _witness("activate", self.id)

    async def on_deactivate(self) -> None:
        _witness("deactivate", self.id)

    async def Add(self, request: IncrementRequest) -> CounterValue:
        _witness("call", self.id)
        self.state.value += request.by
        return CounterValue(value=self.state.value)

    async def SlowAdd(self, request: Int64Value) -> CounterValue:
        """Adds one, then keeps the call in flight for `request.value` milliseconds before
        the node saves and replies."""
        _witness("call", self.id)
        self.state.value += 1
        await asyncio.sleep(request.value / 1000)
        return CounterValue(value=self.state.value)

    async def Get(self, request: Empty) -> CounterValue:
        return CounterValue(value=self.state.value)


class PeriodicLedger(Ledger):
    """A :class:`Ledger` saved every ``--save-interval`` and when it deactivates."""

    durability = Durability.PERIODIC


def _witness(event: str, object_id: str) -> None:
    directory = os.environ.get(WITNESS_DIR)
    if not directory:
        return
    pid = os.getpid()
    line = json.dumps(
        {
            "event": event,
            "object_id": object_id,
            "pid": pid,
            "wall": time.time(),
            "mono_ns": time.monotonic_ns(),
        }
    )
    fd = os.open(
        os.path.join(directory, f"witness-{pid}.jsonl"),
        os.O_WRONLY | os.O_APPEND | os.O_CREAT,
        0o644,
    )
    try:
        os.write(fd, f"{line}\n".encode())
    finally:
        os.close(fd)


class Identity(Object):
    """Says who called it, to test that a client's principal reaches objects."""

    async def Caller(self, request: Empty) -> StringValue:
        """The caller as JSON: client id, calling object (or ""), and the principal's subject
        and claims (null when the client's gate authenticates no one)."""
        caller = self.caller
        principal = caller.principal
        return StringValue(
            value=json.dumps(
                {
                    "client_id": caller.client_id,
                    "object": caller.object_id,
                    "subject": principal.subject if principal is not None else None,
                    "claims": dict(principal.claims) if principal is not None else None,
                }
            )
        )

    async def CallerOf(self, request: StringValue) -> StringValue:
        """What Identity `request.value` sees when this object calls it for its client."""
        return await self.call_object("Identity", request.value, "Caller", Empty(), StringValue)
