"""The object API: the base class of hosted objects and what a method can do while it runs.

A hosted object is a subclass of :class:`Object` in a module the node loads with ``--objects``.
Its type name is the class name (or ``type_name``). Its callable methods are the coroutine
methods whose names start with an upper-case letter and that take one protobuf message and
return one::

    class Counter(Object):
        def __init__(self) -> None:
            self.value = 0

        async def Increment(self, request: IncrementRequest) -> CounterValue:
            self.value += request.by
            return CounterValue(value=self.value)

The node creates one instance per ``(type, id)`` it owns, on first use, and runs one call at a
time on it. An object whose state must outlive its activation (a restart, a shard move, an idle
deactivation) subclasses :class:`Stateful` instead and keeps that state in ``self.state``, one
protobuf message the node loads before ``on_activate`` and saves as its :class:`Durability`
says::

    class Counter(Stateful[CounterState]):
        durability = Durability.EACH_CALL

        async def Increment(self, request: IncrementRequest) -> CounterValue:
            self.state.value += request.by
            return CounterValue(value=self.state.value)

Inside a method, ``self.caller`` says who called, :meth:`Object.call_object` calls
another object wherever it lives, and :meth:`Object.push` / :meth:`Object.broadcast` send a
message to clients without ever blocking. :mod:`goverse.testing` hosts an object class in a
unit test with the same rules.
"""

from __future__ import annotations

import contextvars
import enum
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from google.protobuf.message import Message

M = TypeVar("M", bound=Message)
S = TypeVar("S", bound=Message)


@dataclass(frozen=True)
class Principal:
    """Who a client authenticated as when it registered with its gate (the gate's
    ``--authenticator``): the token's subject and the claims the gate forwards
    (``--jwt-claims``); a claim that is not a string is its JSON text."""

    subject: str
    claims: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Caller:
    """Who made the current call: the client (as verified by its gate) and, for a call from
    another object, that object. ``client_id`` is "" for calls no client started.
    ``principal`` is who the client authenticated as; None when its gate authenticates no one
    (``--authenticator none``). A call from another object carries the principal of the
    client whose call it serves."""

    client_id: str = ""
    object_type: str = ""
    object_id: str = ""
    principal: Principal | None = None


class ObjectRuntime(Protocol):
    """What the hosting node provides to its objects."""

    async def call_object(
        self,
        caller: Caller,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        response_type: type[M],
    ) -> M: ...

    def push(self, client_ids: Iterable[str], message: Message) -> int: ...

    def broadcast(self, message: Message) -> int: ...


_current_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar(
    "goverse_caller",
    default=Caller(),  # noqa: B039 - Caller is a frozen dataclass
)


class Object:
    """Base class of hosted objects. Subclasses are constructed with no arguments."""

    type_name: ClassVar[str | None] = None
    """The type name clients address; the class name when None."""
    push_types: ClassVar[tuple[type[Message], ...]] = ()
    """The message classes the type's objects push, for ``Describe`` (``docs/cli.md``): a
    client decodes a push with the descriptors Describe hands out, which hold the whole
    ``.proto`` file of every method's request and response. A pushed message defined in one
    of those files needs no entry; one defined in another file must be listed here, or
    clients cannot decode it."""

    _goverse_id: str
    _goverse_runtime: ObjectRuntime

    @classmethod
    def object_type(cls) -> str:
        return cls.type_name or cls.__name__

    @property
    def id(self) -> str:
        """This object's id."""
        return self._goverse_id

    @property
    def caller(self) -> Caller:
        """Who made the call being served now."""
        return _current_caller.get()

    async def on_activate(self) -> None:
        """Called once after construction, before the first method call."""

    async def on_deactivate(self) -> None:
        """Called once when the object is deleted or its node stops."""

    async def call_object(
        self,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        response_type: type[M],
    ) -> M:
        """Calls a method of another object, on whichever node owns it.

        Raises :class:`goverse.errors.CallError` carrying the callee's status code on failure.
        Calling this object itself would wait for its own turn forever, so it raises
        :class:`goverse.errors.FailedPrecondition` instead.
        """
        me = Caller(self.caller.client_id, self.object_type(), self.id, self.caller.principal)
        return await self._goverse_runtime.call_object(
            me, object_type, object_id, method, request, response_type
        )

    def push(self, client_ids: str | Iterable[str], message: Message) -> int:
        """Queues `message` for one or many clients; never blocks, never raises.

        Returns how many of the clients' gates accepted it. A push to a client whose gate is
        not connected to this node, or whose queue on this node is full, is dropped, counted
        and logged; delivery to a gate is not a confirmation the client received it.
        """
        ids = [client_ids] if isinstance(client_ids, str) else list(client_ids)
        return self._goverse_runtime.push(ids, message)

    def broadcast(self, message: Message) -> int:
        """Queues `message` for every client of every gate; returns how many gates took it."""
        return self._goverse_runtime.broadcast(message)


class Durability(enum.StrEnum):
    """When the node saves a :class:`Stateful` object's state (only when it changed)."""

    EACH_CALL = "each-call"
    """After every call that changed it, before the reply is sent: an acknowledged call is
    never lost. Saves of concurrent calls to different objects share one transaction."""
    PERIODIC = "periodic"
    """Every ``--save-interval`` and when the object deactivates (idle, handoff, stop): much
    cheaper; a crash loses the changes of the last interval, acknowledged or not."""


class Stateful(Object, Generic[S]):
    """An object whose state is one protobuf message of type ``S``, kept in ``self.state``.

    With a store (``--store``), the node loads the stored state (or a fresh ``S()``) into
    ``self.state`` before ``on_activate`` and saves it as :attr:`durability` says; without one
    the state lives as long as the activation. Keep everything that must survive in
    ``self.state``: other attributes start afresh at each activation.
    """

    durability: ClassVar[Durability] = Durability.EACH_CALL
    state_type: ClassVar[type[Message]]
    """``S``, found in the class's bases when it is defined."""

    state: S

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            if typing.get_origin(base) is Stateful:
                (argument,) = typing.get_args(base)
                if isinstance(argument, type) and issubclass(argument, Message):
                    cls.state_type = argument


def state_type_of(cls: type[Object]) -> type[Message] | None:
    """The state message class of a :class:`Stateful` class; None for a stateless one.
    Raises :class:`ObjectDefinitionError` for a Stateful class that does not say ``S``."""
    if not issubclass(cls, Stateful):
        return None
    found = getattr(cls, "state_type", None)
    if found is None:
        raise ObjectDefinitionError(
            f"{cls.__module__}.{cls.__qualname__}: a Stateful class names its state message "
            "class: class MyObject(Stateful[MyState])"
        )
    return typing.cast("type[Message]", found)


class ObjectDefinitionError(Exception):
    """A class or a module of classes does not define usable object types: a module that
    cannot be imported or defines none, an invalid or duplicate type name, a method whose
    annotations cannot be resolved. The node refuses to start with it (exit status 2)."""


def bind_object(obj: Object, object_id: str, runtime: ObjectRuntime) -> None:
    """Gives a new instance its id and runtime; used by the node."""
    obj._goverse_id = object_id
    obj._goverse_runtime = runtime


def set_caller(caller: Caller) -> contextvars.Token[Caller]:
    """Makes `caller` the caller of the code that runs next in this context; used by the node."""
    return _current_caller.set(caller)


def reset_caller(token: contextvars.Token[Caller]) -> None:
    _current_caller.reset(token)


__all__ = [
    "Caller",
    "Durability",
    "Object",
    "ObjectDefinitionError",
    "ObjectRuntime",
    "Principal",
    "Stateful",
    "bind_object",
    "reset_caller",
    "set_caller",
    "state_type_of",
]
