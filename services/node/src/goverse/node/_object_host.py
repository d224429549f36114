"""Object host: the active objects of a node, their activation, turns, state and deactivation."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog
from google.protobuf.any_pb2 import Any
from google.protobuf.message import Message

from goverse import wire
from goverse._object_types import MethodInfo, ObjectType
from goverse.errors import (
    GoverseError,
    Internal,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from goverse.ids import validate_method, validate_object_ref
from goverse.node._call_context import ObjectKey, serving
from goverse.node._object_state import ObjectState
from goverse.node._shards import ShardTable
from goverse.objects import (
    Caller,
    Durability,
    Object,
    ObjectRuntime,
    bind_object,
    reset_caller,
    set_caller,
)
from goverse.placement import shard_of
from goverse.server import (
    ALLOW_ALL,
    ENDUSER_ID,
    AccessGuard,
    Operation,
    log_context,
    object_call_span,
)

log = structlog.get_logger(__name__)

STOPPED = (asyncio.CancelledError, GeneratorExit)
"""What ends object code from outside (its call cancelled, its coroutine closed): passed on.
Anything else it raises, a BaseException too (SystemExit, a library's own), is the object's
failure: the node's signals never raise in its tasks, and left to the event loop a SystemExit
would end the node, another BaseException the call's task without an answer."""

RETIRE_AT_ONCE = 512
"""Idle objects retired concurrently: enough that their saves fill the store's batches
(``MAX_BATCH``), few enough that retiring adds little memory of its own."""


@dataclass(eq=False, slots=True)  # one per active object: no __dict__ each
class _Activation:
    """One object instance and its turn. `gone` once deactivated, dropped or failed to
    activate: a caller that was waiting for the turn then starts over with a fresh instance.
    `stored` is its state as the store has it; `dirty` says a call ran since it was saved."""

    instance: Object
    type: ObjectType
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    active: bool = False
    gone: bool = False
    stored: bytes = b""
    dirty: bool = False
    used: float = field(default_factory=time.monotonic)


class ObjectHost:
    """Holds the objects this node owns, keyed by (type, id), and runs calls on them.

    An object is created and activated on its first call (or an explicit :meth:`create`),
    exactly once even when many first calls arrive together. Each object serves one call at a
    time, in arrival order (an :class:`asyncio.Lock` per object); different objects serve
    calls concurrently. Every entry point checks the ids and the type, then is admitted by the
    :class:`~goverse.node._shards.ShardTable` for the object's shard before it waits for the
    object's turn (this node owns the shard, it is not being handed off, the lease is valid),
    and raises a :class:`goverse.errors.GoverseError` saying what is wrong otherwise.

    A stateful object's state is loaded (:class:`ObjectState`) before its ``on_activate`` and
    saved after ``on_deactivate``; of an each-call type also after every call, before the
    reply; of a periodic type by :meth:`save_changed`. When a save fails (the store is
    unreachable, a newer owner claimed the object), the object is dropped without running any
    more of its code, so the next call starts from what the store has; only a periodic save
    the store could not be reached for keeps the object and its changes for the next one. At
    most `max_objects` objects are held (`state`: none kept beyond an activation when not given);
    :meth:`deactivate_idle` retires those no call reached for a while.
    """

    def __init__(
        self,
        types: Mapping[str, ObjectType],
        shards: ShardTable,
        node: str,
        state: ObjectState | None = None,
        max_objects: int = 1_000_000,
        access: AccessGuard | None = None,
    ) -> None:
        self._access = access if access is not None else AccessGuard(ALLOW_ALL)
        self._types = types
        self._shards = shards
        self._node = node
        self._state = state or ObjectState(None, shards, node)
        self._max_objects = max_objects
        self._objects: dict[ObjectKey, _Activation] = {}
        self._by_shard: dict[int, set[ObjectKey]] = {}
        self._runtime: ObjectRuntime | None = None
        self._closing = False

    def attach_runtime(self, runtime: ObjectRuntime) -> None:
        """Sets what objects activated from now on use to call, push and broadcast."""
        self._runtime = runtime

    @property
    def types(self) -> Mapping[str, ObjectType]:
        return self._types

    @property
    def held_count(self) -> int:
        """Objects held now, active or on their way in or out (cheap: no scan)."""
        return len(self._objects)

    @property
    def active_count(self) -> int:
        return sum(1 for entry in self._objects.values() if entry.active)

    def active_by_type(self) -> dict[str, int]:
        """How many objects of each type are active now (safe to call from another thread)."""
        counts: dict[str, int] = {}
        for (object_type, _), entry in list(self._objects.items()):
            if entry.active:
                counts[object_type] = counts.get(object_type, 0) + 1
        return counts

    def list(self, object_type: str = "") -> list[ObjectKey]:
        """The active objects (of `object_type` only, unless empty), sorted."""
        return sorted(
            key
            for key, entry in self._objects.items()
            if entry.active and (not object_type or key[0] == object_type)
        )

    def is_active(self, object_type: str, object_id: str) -> bool:
        entry = self._objects.get((object_type, object_id))
        return entry is not None and entry.active

    def resolve(self, object_type: str) -> ObjectType:
        """The type of a reference its entry point validated (:meth:`invoke`, :meth:`create`,
        :meth:`delete`, first of all); NotFound when no type of that name is hosted."""
        found = self._types.get(object_type)
        if found is None:
            raise NotFound(f"unknown object type {object_type!r}")
        return found

    def _admitted(self, key: ObjectKey, shard: int) -> contextlib.AbstractContextManager[int]:
        """The call counts in flight in its shard, or is refused with
        :class:`~goverse.errors.ShardNotServed` (not the owner, or moving) — marked so that
        routing sends it again, to the owner it finds next."""
        return self._shards.admit(shard, f"{key[0]}/{key[1]}")

    def _still_admitted(self, key: ObjectKey, shard: int) -> None:
        """Refuses, before any of the object's code runs, a call that was admitted but may not
        run any more (:meth:`ShardTable.still_admitted`): routing sends it again."""
        self._shards.still_admitted(shard, f"{key[0]}/{key[1]}")

    def method(self, object_type: ObjectType, method: str) -> MethodInfo:
        """The callable method; InvalidArgument or Unimplemented (:meth:`ObjectType.method`)."""
        return object_type.method(method)

    @staticmethod
    def unpack(info: MethodInfo, object_type: str, request: Any) -> Message:
        """The request as the method's declared type; InvalidArgument when it is not one."""
        return info.unpack_request(request, object_type)

    async def invoke(
        self, object_type: str, object_id: str, method: str, request: Any, caller: Caller
    ) -> Any:
        """Runs `method` on the object with the packed `request`, activating it if needed.

        Waits for the object's turn. A method that raises a GoverseError answers with it; any
        other exception is logged and answers INTERNAL, as does a wrongly typed result. The
        whole call (turn, activation, method) is one span, ``<Type>.<Method>``.
        """
        # Before the access rules and the span: the names are the caller's, unchecked when it
        # is not a gate, and a span (its name, its attributes) must not carry megabytes.
        validate_object_ref(object_type, object_id)
        validate_method(method)
        # An object's caller names the calling object; a client's call (from a gate) does not.
        self._access.check(
            Operation.CALL, object_type, object_id, method, from_object=bool(caller.object_type)
        )
        with object_call_span(object_type, object_id, method) as span:
            if caller.principal is not None:
                span.set_attribute(ENDUSER_ID, caller.principal.subject)
            return await self._invoke(object_type, object_id, method, request, caller)

    async def _invoke(
        self, object_type: str, object_id: str, method: str, request: Any, caller: Caller
    ) -> Any:
        found = self.resolve(object_type)
        key = (object_type, object_id)
        shard = shard_of(object_type, object_id)
        with self._admitted(key, shard):  # before the method's checks: a foreign one is retried
            info = self.method(found, method)
            message = self.unpack(info, object_type, request)
            while True:
                entry = self._entry(key, found)
                async with entry.turn:
                    if entry.gone:
                        continue
                    self._still_admitted(key, shard)
                    if not entry.active:
                        await self._activate(key, entry)
                        self._still_admitted(key, shard)
                    try:
                        result = await self._call(key, entry, info, message, caller)
                    except GoverseError:
                        await self._settle(key, entry)
                        raise
                    await self._settle(key, entry)
                    self._shards.still_serving(shard, f"{key[0]}/{key[1]}")
                return wire.pack(result)

    async def create(self, object_type: str, object_id: str) -> bool:
        """Activates the object; False when it already was active."""
        validate_object_ref(object_type, object_id)
        self._access.check(Operation.CREATE, object_type, object_id, from_object=False)
        found = self.resolve(object_type)
        key = (object_type, object_id)
        shard = shard_of(object_type, object_id)
        with self._admitted(key, shard):
            while True:
                entry = self._entry(key, found)
                async with entry.turn:
                    if entry.gone:
                        continue
                    if entry.active:
                        return False
                    self._still_admitted(key, shard)
                    await self._activate(key, entry)
                    return True

    async def delete(self, object_type: str, object_id: str) -> bool:
        """Deactivates the object in its turn, forgets it and removes its stored state;
        False when it was not active."""
        validate_object_ref(object_type, object_id)
        self._access.check(Operation.DELETE, object_type, object_id, from_object=False)
        found = self.resolve(object_type)
        key = (object_type, object_id)
        with self._admitted(key, shard_of(object_type, object_id)):
            was_active = await self._retire(key, save=False)
            if found.state_type is not None:
                await self._state.delete(key)
            return was_active

    async def _retire(self, key: ObjectKey, save: bool = True) -> bool:
        """Deactivates the object in its turn (``on_deactivate``, then its state saved when
        `save`) and forgets it; False when it was not active."""
        while True:
            entry = self._objects.get(key)
            if entry is None:
                return False
            async with entry.turn:
                if entry.gone:
                    continue
                entry.gone = True
                try:
                    if not entry.active:
                        return False
                    entry.active = False
                    await self._deactivate(key, entry)
                    if save:
                        await self._save_quietly(key, entry)
                    return True
                finally:
                    # Forgotten only now, in its turn: a call arriving meanwhile waits for
                    # the turn, then activates a new instance from what was saved, never a
                    # second one from the state stored before.
                    self._forget(key, entry)

    async def _save_quietly(self, key: ObjectKey, entry: _Activation) -> None:
        """Saves a deactivated object's changed state; a failure is logged (the object is
        gone: there is no caller to tell)."""
        try:
            entry.stored = await self._state.save(key, entry.instance, entry.stored)
        except GoverseError as error:
            log.error(
                "state not saved at deactivation",
                object_type=key[0],
                object_id=key[1],
                error=error.message,
            )

    async def _settle(self, key: ObjectKey, entry: _Activation) -> None:
        """After a call: saves an each-call object's changed state before the reply, marks a
        periodic one as changed. A failed save drops the object and raises."""
        entry.used = time.monotonic()
        if entry.type.state_type is None:
            return
        if entry.type.durability is Durability.PERIODIC:
            entry.dirty = True
            return
        try:
            entry.stored = await self._state.save(key, entry.instance, entry.stored)
        except GoverseError:
            self._drop(key, entry)
            raise

    def _drop(self, key: ObjectKey, entry: _Activation) -> None:
        """Forgets an object without running its code or saving it."""
        entry.gone = True
        entry.active = False
        self._forget(key, entry)
        log.warning(
            "object dropped: its state could not be saved", object_type=key[0], object_id=key[1]
        )

    async def save_changed(self) -> int:
        """Saves, each in its turn, every periodic object changed since its last save; returns
        how many were saved. An object the store cannot be reached for keeps its changes for
        the next interval; one whose save fails otherwise is dropped (both logged)."""
        changed = [
            (key, entry)
            for key, entry in self._objects.items()
            if entry.dirty and entry.active and not entry.gone
        ]
        results = await asyncio.gather(*(self._save_in_turn(k, e) for k, e in changed))
        return sum(results)

    async def _save_in_turn(self, key: ObjectKey, entry: _Activation) -> bool:
        async with entry.turn:
            if entry.gone or not entry.active:
                return False
            entry.dirty = False
            try:
                entry.stored = await self._state.save(key, entry.instance, entry.stored)
            except Unavailable as error:
                # Acknowledged changes: kept, and saved again at the next interval.
                entry.dirty = True
                log.warning(
                    "periodic save failed; retried at the next interval",
                    object_type=key[0],
                    object_id=key[1],
                    error=error.message,
                )
                return False
            except GoverseError as error:
                log.error(
                    "periodic save failed",
                    object_type=key[0],
                    object_id=key[1],
                    error=error.message,
                )
                self._drop(key, entry)
                return False
            return True

    async def deactivate_idle(self, idle_for: float) -> int:
        """Retires (state saved) every object no call reached for `idle_for` seconds and that
        is not serving one now, :data:`RETIRE_AT_ONCE` at a time; returns how many."""
        horizon = time.monotonic() - idle_for
        idle = iter(
            [
                key
                for key, entry in self._objects.items()
                if entry.active and entry.used < horizon and not entry.turn.locked()
            ]
        )
        retired = 0

        async def retire() -> None:
            nonlocal retired
            for key in idle:
                # Not `retired += await ...`: that reads `retired` before the await.
                if await self._retire(key):
                    retired += 1

        # A few workers, not a task per object: 50,000 idle objects retired by 50,000 tasks
        # at once took 26 MiB more than the objects themselves (measured in process), memory
        # that the retirement is meant to give back.
        await asyncio.gather(*(retire() for _ in range(RETIRE_AT_ONCE)))
        return retired

    def compact(self) -> None:
        """Gives back the memory of the tables of objects after many were forgotten (a dict
        never shrinks by deletions: 100,000 entries deleted keep 5 MiB)."""
        self._objects = dict(self._objects)
        self._by_shard = dict(self._by_shard)

    async def deactivate_all(self, timeout: float) -> builtins.list[str]:
        """Refuses new calls from now on, deactivates every object (each in its turn, all at
        once) and forgets them. Returns the objects not deactivated within `timeout` seconds;
        their deactivation is cancelled."""
        self._closing = True
        keys = list(self._objects)
        if not keys:
            return []
        tasks = {
            asyncio.create_task(self._retire(key), name=f"deactivate:{key[0]}/{key[1]}"): key
            for key in keys
        }
        _, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.0))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.5)
        self._objects.clear()
        self._by_shard.clear()
        return sorted(f"{tasks[task][0]}/{tasks[task][1]}" for task in pending)

    async def deactivate_shard(self, shard: int, timeout: float) -> builtins.list[str]:
        """Deactivates every object of `shard`, each in its turn, all at once (a handoff: the
        shard admits no call any more). Returns the objects not deactivated within `timeout`
        seconds; their deactivation is cancelled: one still waiting for its turn stays active,
        one whose ``on_deactivate`` or save was running is forgotten, unsaved."""
        keys = list(self._by_shard.get(shard, ()))
        if not keys:
            return []
        tasks = {
            asyncio.create_task(self._retire(key), name=f"deactivate:{key[0]}/{key[1]}"): key
            for key in keys
        }
        _, pending = await asyncio.wait(tasks, timeout=max(timeout, 0.0))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.5)
        return sorted(f"{tasks[task][0]}/{tasks[task][1]}" for task in pending)

    def drop_all(self) -> int:
        """Forgets every object without running any of its code (fencing: another node may
        already own them); a call waiting for a dropped object's turn starts over and is
        refused by its shard. Returns how many were active."""
        active = sum(1 for entry in self._objects.values() if entry.active)
        for entry in self._objects.values():
            entry.gone = True
            entry.active = False
        self._objects.clear()
        self._by_shard.clear()
        return active

    def _forget(self, key: ObjectKey, entry: _Activation) -> None:
        if self._objects.get(key) is entry:
            del self._objects[key]
            members = self._by_shard.get(shard_of(*key))
            if members is not None:
                members.discard(key)
                if not members:
                    del self._by_shard[shard_of(*key)]

    def _entry(self, key: ObjectKey, object_type: ObjectType) -> _Activation:
        entry = self._objects.get(key)
        if entry is not None:
            return entry
        if self._closing:
            raise Unavailable(f"node {self._node} is stopping")
        if len(self._objects) >= self._max_objects:
            raise ResourceExhausted(
                f"node {self._node} holds its most objects (--max-objects "
                f"{self._max_objects}); {key[0]}/{key[1]} is not activated"
            )
        try:
            instance = object_type.cls()
        except Exception as error:
            log.exception("object construction failed", object_type=key[0], object_id=key[1])
            raise Internal(f"{key[0]}/{key[1]} could not be constructed") from error
        entry = _Activation(instance, object_type)
        self._objects[key] = entry
        self._by_shard.setdefault(shard_of(*key), set()).add(key)
        return entry

    async def _activate(self, key: ObjectKey, entry: _Activation) -> None:
        if self._runtime is None:
            raise RuntimeError("ObjectHost.attach_runtime() was not called")
        bind_object(entry.instance, key[1], self._runtime)
        try:
            entry.stored = await self._state.restore(entry.type, key, entry.instance)
            with (
                log_context(object_type=key[0], object_id=key[1]),
                serving(key),
            ):
                await entry.instance.on_activate()
        except BaseException as error:
            entry.gone = True
            self._forget(key, entry)
            if isinstance(error, (GoverseError, *STOPPED)):
                raise
            log.exception("activation failed", object_type=key[0], object_id=key[1])
            raise Internal(f"{key[0]}/{key[1]} failed to activate") from error
        entry.active = True
        log.debug("object activated", object_type=key[0], object_id=key[1])

    async def _deactivate(self, key: ObjectKey, entry: _Activation) -> None:
        with log_context(object_type=key[0], object_id=key[1]):
            try:
                with serving(key):
                    await entry.instance.on_deactivate()
            except STOPPED:
                raise
            except BaseException:
                log.exception("on_deactivate raised")
            else:
                log.debug("object deactivated")

    async def _call(
        self, key: ObjectKey, entry: _Activation, info: MethodInfo, request: Message, caller: Caller
    ) -> Message:
        with log_context(
            object_type=key[0],
            object_id=key[1],
            client_id=caller.client_id,
            principal=caller.principal.subject if caller.principal is not None else None,
        ):
            token = set_caller(caller)
            try:
                with serving(key):
                    result = await info.function(entry.instance, request)
            except (GoverseError, *STOPPED):
                raise
            except BaseException as error:
                log.exception("object method raised", method=info.name)
                raise Internal(f"{key[0]}.{info.name} failed ({type(error).__name__})") from error
            finally:
                reset_caller(token)
            try:
                info.check_response(result, key[0])
            except Internal:
                log.error(
                    "object method returned the wrong type",
                    method=info.name,
                    expected=info.response_type_name,
                    got=type(result).__qualname__,
                )
                raise
            return result


__all__ = ["ObjectHost"]
