"""Counter: the smallest stateful object, an integer that clients increment."""

from __future__ import annotations

from goverse.examples.v1.counter_pb2 import CounterValue, GetRequest, IncrementRequest
from goverse.objects import Object


class Counter(Object):
    """An integer, per object id, starting at 0."""

    def __init__(self) -> None:
        self.value = 0

    async def Increment(self, request: IncrementRequest) -> CounterValue:
        self.value += request.by
        return CounterValue(value=self.value)

    async def Get(self, request: GetRequest) -> CounterValue:
        return CounterValue(value=self.value)
