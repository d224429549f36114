"""Objects that only the node's unit tests host: activation counting, rendezvous, call chains."""

from __future__ import annotations

import asyncio
from typing import ClassVar

from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value, StringValue

from goverse.objects import Object


class Tally(Object):
    """Counts constructions, activations and deactivations of every instance."""

    constructed: ClassVar[int] = 0
    activated: ClassVar[int] = 0
    deactivated: ClassVar[list[str]] = []

    def __init__(self) -> None:
        type(self).constructed += 1
        self.calls = 0

    async def on_activate(self) -> None:
        # Yield a few times so that concurrent first calls really interleave.
        for _ in range(5):
            await asyncio.sleep(0)
        type(self).activated += 1

    async def on_deactivate(self) -> None:
        type(self).deactivated.append(self.id)

    async def Hit(self, request: Empty) -> Int64Value:
        self.calls += 1
        return Int64Value(value=self.calls)

    @classmethod
    def reset(cls) -> None:
        cls.constructed = 0
        cls.activated = 0
        cls.deactivated = []


class Meeting(Object):
    """Meet() returns only once `request.value` calls are inside Meet() at the same time."""

    inside: ClassVar[int] = 0
    changed: ClassVar[asyncio.Condition | None] = None

    async def Meet(self, request: Int64Value) -> Int64Value:
        cls = type(self)
        if cls.changed is None:
            cls.changed = asyncio.Condition()
        async with cls.changed:
            cls.inside += 1
            cls.changed.notify_all()
            await cls.changed.wait_for(lambda: cls.inside >= request.value)
        return Int64Value(value=cls.inside)

    @classmethod
    def reset(cls) -> None:
        cls.inside = 0
        cls.changed = None


class Forwarder(Object):
    """Forward("b,c") calls Forwarder b with "c", which calls Forwarder c with ""."""

    async def Forward(self, request: StringValue) -> StringValue:
        first, _, rest = request.value.partition(",")
        if not first:
            return StringValue(value=self.id)
        reply = await self.call_object(
            "Forwarder", first, "Forward", StringValue(value=rest), StringValue
        )
        return StringValue(value=f"{self.id},{reply.value}")

    async def WhoCalls(self, request: StringValue) -> StringValue:
        """Asks Pusher `request.value` who called it (tests that the client id travels)."""
        return await self.call_object("Pusher", request.value, "WhoAmI", Empty(), StringValue)

    async def SleepOn(self, request: Int64Value) -> Int64Value:
        """Calls Sleeper "s-<id>" to sleep `request.value` ms (tests call deadlines)."""
        return await self.call_object("Sleeper", f"s-{self.id}", "Sleep", request, Int64Value)


class Fragile(Object):
    """Its first activation (of any instance) fails; later ones succeed."""

    fail_next: ClassVar[bool] = True

    async def on_activate(self) -> None:
        if type(self).fail_next:
            type(self).fail_next = False
            raise ValueError("first activation fails")

    async def Ping(self, request: Empty) -> Empty:
        return Empty()


class Misbehaving(Object):
    """Methods that break the rules in ways the node must answer cleanly."""

    async def WrongType(self, request: Empty) -> Int64Value:
        return StringValue(value="not an Int64Value")  # type: ignore[return-value]

    async def Refuse(self, request: Empty) -> Empty:
        from goverse.errors import ResourceExhausted

        raise ResourceExhausted("refused on purpose")

    async def notCallable(self, request: Empty) -> Empty:  # lower-case: not callable
        return Empty()

    def Sync(self, request: Empty) -> Empty:  # not async: not callable
        return Empty()

    async def Untyped(self, request):  # type: ignore[no-untyped-def]  # no annotations
        return Empty()

    async def TwoArgs(self, request: Empty, other: Empty) -> Empty:
        return Empty()


class Escape(BaseException):
    """What no object should raise, and some code does (a library's own BaseException)."""


class Escaping(Object):
    """Raises exceptions that are not Exceptions: from a method, and from ``on_activate`` /
    ``on_deactivate`` when its id says so."""

    async def on_activate(self) -> None:
        if self.id.startswith("activate-"):
            raise Escape("from on_activate")

    async def on_deactivate(self) -> None:
        if self.id.startswith("deactivate-"):
            raise SystemExit("from on_deactivate")

    async def Raise(self, request: Empty) -> Empty:
        raise Escape("from a method")

    async def Exit(self, request: Empty) -> Empty:
        raise SystemExit(3)

    async def Ping(self, request: Empty) -> Empty:
        return Empty()


class Derived(Forwarder):
    """Inherits Forward and SleepOn; adds nothing."""
