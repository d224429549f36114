"""Counter: the smallest stateful object, an integer that clients increment."""

from __future__ import annotations

from goverse.examples.v1.counter_pb2 import (
    CounterState,
    CounterValue,
    GetRequest,
    IncrementRequest,
)
from goverse.objects import Durability, Stateful


class Counter(Stateful[CounterState]):
    """An integer, per object id, starting at 0; with a store, an acknowledged increment is
    never lost."""

    durability = Durability.EACH_CALL

    async def Increment(self, request: IncrementRequest) -> CounterValue:
        self.state.value += request.by
        return CounterValue(value=self.state.value)

    async def Get(self, request: GetRequest) -> CounterValue:
        return CounterValue(value=self.state.value)
