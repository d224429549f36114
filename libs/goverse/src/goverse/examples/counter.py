"""Counter: the smallest stateful object, an integer that clients increment."""

from __future__ import annotations

from goverse.errors import OutOfRange
from goverse.examples.v1.counter_pb2 import (
    CounterState,
    CounterValue,
    GetRequest,
    IncrementRequest,
)
from goverse.objects import Durability, Stateful

MIN_VALUE = -(2**63)
MAX_VALUE = 2**63 - 1
"""The range of the state's int64: a value past it cannot be stored (protobuf refused the
assignment, and every later call answered INTERNAL)."""


class Counter(Stateful[CounterState]):
    """An integer, per object id, starting at 0; with a store, an acknowledged increment is
    never lost. An increment that would leave the int64 range is refused with OUT_OF_RANGE and
    changes nothing."""

    durability = Durability.EACH_CALL

    async def Increment(self, request: IncrementRequest) -> CounterValue:
        value = self.state.value + request.by
        if not MIN_VALUE <= value <= MAX_VALUE:
            raise OutOfRange(
                f"incrementing {self.state.value} by {request.by} leaves the int64 range"
            )
        self.state.value = value
        return CounterValue(value=value)

    async def Get(self, request: GetRequest) -> CounterValue:
        return CounterValue(value=self.state.value)
