"""Testing objects in process: host an object class in a test, call it, see what it did.

No gate, no node, no network (in the spirit of ``temporalio.testing``)::

    from goverse.testing import ObjectEnvironment, Pushed

    async def test_sending_pushes_to_every_member() -> None:
        env = ObjectEnvironment()
        room = env.create(ChatRoom, "lobby")
        await room.call("Join", JoinRequest(user="ann"), JoinResponse, caller="gate-a/ann")
        await room.call("Send", SendRequest(user="ann", text="hi"), SendResponse)
        said = ChatMessage(room="lobby", user="ann", text="hi", seq=1)
        assert env.pushes == [Pushed(("gate-a/ann",), said)]

An :class:`ObjectEnvironment` hosts instances of :class:`~goverse.objects.Object` subclasses
and runs calls on them with the rules a node applies (the method table and the request and
result checks are the node's own code, :mod:`goverse._object_types`):

- only callable methods can be called: another name
  raises :class:`~goverse.errors.Unimplemented` (saying why the method is not callable), a
  request of another type :class:`~goverse.errors.InvalidArgument`, a result of another type
  :class:`~goverse.errors.Internal`;
- ``on_activate`` runs once, before the first call; calls to one object run one at a time;
  after a failed activation or :meth:`HostedObject.deactivate`, the next call starts over with
  a fresh instance; a :class:`~goverse.objects.Stateful` object's state is saved when it
  deactivates (``env.stored``) and the fresh instance starts from it, as from a node's store;
- ``self.caller`` is who the test says calls (and ``self.caller.principal`` whom it says
  the client authenticated as);
- a :class:`~goverse.errors.GoverseError` raised by a method reaches the test as it is, with its
  ``status_code``; any other exception becomes Internal, chained to the original;
- requests and responses cross as copies, packed and unpacked as on the wire.

What objects do is recorded in lists the test reads (and may clear): ``env.pushes``
(:class:`Pushed`), ``env.broadcasts`` and ``env.calls`` (:class:`ObjectCall`, every
``call_object``). A call to another object is checked like a node checks it (malformed ids are
a :class:`~goverse.errors.CallError`; a call back into an object already serving the call chain
would wait for its own turn, so it raises FailedPrecondition), then answered by the first of:

1. a response registered with :meth:`ObjectEnvironment.respond` for its type, id and method;
2. the object of that type and id, if the environment hosts it (its failure reaches the caller
   as a :class:`~goverse.errors.CallError` with its status code, as from a node);
3. a response registered for its type and method, any id.

Otherwise it raises :class:`UnansweredCallError`, an AssertionError that fails the test.
Calls carry no deadline here, and pushes are never dropped for a full queue.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message

from goverse import wire
from goverse._object_types import MethodInfo, ObjectType, object_type_of
from goverse.errors import (
    CallError,
    FailedPrecondition,
    GoverseError,
    Internal,
    Unimplemented,
)
from goverse.ids import gate_of_client, validate_method, validate_object_id, validate_object_ref
from goverse.objects import (
    Caller,
    Object,
    ObjectDefinitionError,
    Principal,
    bind_object,
    reset_caller,
    set_caller,
)

M = TypeVar("M", bound=Message)
T = TypeVar("T", bound=Object)

Response = Message | GoverseError | Callable[[Any], Message]
"""What answers a registered call: a message, an error (the caller gets a CallError with its
status code), or a function of the request returning the message (it may raise an error)."""

_serving: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "goverse_testing_serving", default=()
)
"""The hosted objects serving the call running in this context, outermost first."""


@dataclass(frozen=True)
class Pushed:
    """One push: the client ids the object gave (each once, in order) and the message."""

    client_ids: tuple[str, ...]
    message: Message


@dataclass(frozen=True)
class ObjectCall:
    """One ``call_object`` an object made: who called (the client, and the calling object),
    which object and method, and the request."""

    caller: Caller
    object_type: str
    object_id: str
    method: str
    request: Message


class UnansweredCallError(AssertionError):
    """An object called another object that the test neither hosts nor registered a response
    for. It is not translated into a status code: it fails the test that made the call."""


def _copy(message: M) -> M:
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


def _passes_through(error: BaseException) -> bool:
    """Whether `error` reaches the caller as it is rather than as Internal."""
    return isinstance(error, GoverseError | UnansweredCallError) or not isinstance(error, Exception)


class HostedObject(Generic[T]):
    """One object hosted by an :class:`ObjectEnvironment`: made by
    :meth:`ObjectEnvironment.create`, called with :meth:`call`."""

    def __init__(
        self, environment: ObjectEnvironment, cls: type[T], found: ObjectType, object_id: str
    ) -> None:
        self._environment = environment
        self._cls = cls
        self._type = found
        self._id = object_id
        self._instance: T | None = self._fresh()
        self._turn = asyncio.Lock()
        self._active = False

    @property
    def object_type(self) -> str:
        return self._type.name

    @property
    def id(self) -> str:
        return self._id

    @property
    def instance(self) -> T:
        """The instance that serves calls, to look at its state (a fresh one after
        :meth:`deactivate` or a failed activation)."""
        if self._instance is None:
            self._instance = self._fresh()
        return self._instance

    def _fresh(self) -> T:
        """A new instance; a stateful one holds the state its last deactivation saved."""
        instance = self._cls()
        state_type = self._type.state_type
        if state_type is not None:
            state = state_type()
            state.ParseFromString(self._environment.stored.get(self._key, b""))
            instance.state = state  # type: ignore[attr-defined]
        return instance

    @property
    def active(self) -> bool:
        """Whether ``on_activate`` has run on the current instance."""
        return self._active

    async def call(
        self,
        method: str,
        request: Message,
        response_type: type[M],
        *,
        caller: Caller | str = "",
        principal: Principal | None = None,
    ) -> M:
        """Calls `method` with `request` as `caller` (a client id, or a whole
        :class:`~goverse.objects.Caller` to call as another object), activating the object
        first if needed, once its previous calls are done. `principal`, when given, is who
        the caller authenticated as (``self.caller.principal``), as a gate with an
        authenticator would say.

        Raises the :class:`~goverse.errors.GoverseError` the node would answer with (see the
        module docstring), :class:`UnansweredCallError` when the method called an object
        nobody answers, and TypeError when `response_type` is not what the method returns.
        """
        info = self._method(method)
        if response_type is not info.response_type:
            raise TypeError(
                f"{self.object_type}.{method} returns {info.response_type_name}, "
                f"not {response_type.DESCRIPTOR.full_name}"
            )
        message = info.unpack_request(wire.pack(request), self.object_type)
        who = Caller(client_id=caller) if isinstance(caller, str) else caller
        if principal is not None:
            who = dataclasses.replace(who, principal=principal)
        result = await self._serve(info, message, who)
        return wire.unpack(wire.pack(result), response_type)

    async def deactivate(self) -> bool:
        """Runs ``on_deactivate`` in the object's turn, as deleting it on a node does; the
        next call activates a fresh instance. False when the object was not active.

        An exception from ``on_deactivate`` propagates (a node logs it and goes on).
        """
        async with self._turn:
            if not self._active or self._instance is None:
                return False
            instance, self._instance, self._active = self._instance, None, False
            token = _serving.set((*_serving.get(), self._key))
            try:
                await instance.on_deactivate()
            finally:
                _serving.reset(token)
            if self._type.state_type is not None:
                state: Message = instance.state  # type: ignore[attr-defined]
                self._environment.stored[self._key] = state.SerializeToString()
            return True

    @property
    def _key(self) -> tuple[str, str]:
        return (self._type.name, self._id)

    def _method(self, method: str) -> MethodInfo:
        reason = self._type.rejected.get(method)
        if reason is not None:
            # The node answers only "no method"; a test tells the author why.
            raise Unimplemented(f"{self.object_type}.{method} is not callable: {reason}")
        return self._type.method(method)

    async def _serve(self, info: MethodInfo, request: Message, caller: Caller) -> Message:
        async with self._turn:
            token = _serving.set((*_serving.get(), self._key))
            try:
                if not self._active:
                    await self._activate()
                return await self._run(info, request, caller)
            finally:
                _serving.reset(token)

    async def _activate(self) -> None:
        name = f"{self.object_type}/{self._id}"
        try:
            instance = self.instance
        except Exception as error:
            raise Internal(f"{name} could not be constructed") from error
        bind_object(instance, self._id, self._environment._runtime)
        try:
            await instance.on_activate()
        except BaseException as error:
            self._instance = None
            if _passes_through(error):
                raise
            raise Internal(f"{name} failed to activate") from error
        self._active = True

    async def _run(self, info: MethodInfo, request: Message, caller: Caller) -> Message:
        token = set_caller(caller)
        try:
            result = await info.function(self.instance, request)
        except BaseException as error:
            if _passes_through(error):
                raise
            raise Internal(
                f"{self.object_type}.{info.name} failed ({type(error).__name__})"
            ) from error
        finally:
            reset_caller(token)
        info.check_response(result, self.object_type)
        return result


class _Runtime:
    """The :class:`~goverse.objects.ObjectRuntime` of an environment's objects."""

    def __init__(self, environment: ObjectEnvironment) -> None:
        self._environment = environment

    async def call_object(
        self,
        caller: Caller,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        response_type: type[M],
    ) -> M:
        return await self._environment._call_object(
            caller, object_type, object_id, method, request, response_type
        )

    def push(self, client_ids: Iterable[str], message: Message) -> int:
        return self._environment._push(client_ids, message)

    def broadcast(self, message: Message) -> int:
        return self._environment._broadcast(message)


class ObjectEnvironment:
    """Objects hosted in process for a test, and a record of what they did (module docstring).

    Make one per test; it holds no resources and needs no closing.
    """

    def __init__(self) -> None:
        self.pushes: list[Pushed] = []
        """Every push, in order."""
        self.broadcasts: list[Message] = []
        """Every broadcast message, in order."""
        self.calls: list[ObjectCall] = []
        """Every call an object made to another object, in order (answered or not)."""
        self.stored: dict[tuple[str, str], bytes] = {}
        """The serialized state of each :class:`~goverse.objects.Stateful` object, by
        ``(type, id)``, as its last deactivation saved it: a fresh instance starts from it."""
        self._runtime = _Runtime(self)
        self._types: dict[str, ObjectType] = {}
        self._objects: dict[tuple[str, str], HostedObject[Any]] = {}
        self._responses: dict[tuple[str, str | None, str], Response] = {}

    def create(self, cls: type[T], object_id: str) -> HostedObject[T]:
        """Hosts a new instance of `cls` with `object_id` (constructed now, activated on its
        first call).

        Raises :class:`~goverse.objects.ObjectDefinitionError` when the node would refuse
        `cls` (an invalid type name, annotations that do not resolve, another class with
        its type name), InvalidArgument for a malformed id, and ValueError when this
        environment already hosts the object.
        """
        if not (isinstance(cls, type) and issubclass(cls, Object)):
            raise TypeError(f"{cls!r} is not an Object subclass")
        validate_object_id(object_id)
        found = self._types.get(cls.object_type())
        if found is None or found.cls is not cls:
            if found is not None:
                raise ObjectDefinitionError(
                    f"object type {found.name!r} is defined twice: by "
                    f"{found.cls.__qualname__} and by {cls.__qualname__}"
                )
            found = object_type_of(cls)
            self._types[found.name] = found
        key = (found.name, object_id)
        if key in self._objects:
            raise ValueError(f"{found.name}/{object_id} is already hosted")
        hosted = HostedObject(self, cls, found, object_id)
        self._objects[key] = hosted
        return hosted

    def respond(
        self,
        object_type: str,
        method: str,
        response: Response,
        *,
        object_id: str | None = None,
    ) -> None:
        """Answers objects' calls to `method` of `object_type` (of that one `object_id`, when
        given) with `response` (see :data:`Response`); replaces an earlier registration."""
        self._responses[(object_type, object_id, method)] = response

    def pushed_to(self, client_id: str) -> list[Message]:
        """The messages pushed to `client_id`, in order (broadcasts not included)."""
        return [pushed.message for pushed in self.pushes if client_id in pushed.client_ids]

    async def _call_object(
        self,
        caller: Caller,
        object_type: str,
        object_id: str,
        method: str,
        request: Message,
        response_type: type[M],
    ) -> M:
        # The checks and translations of the node's runtime for a local callee.
        self.calls.append(ObjectCall(caller, object_type, object_id, method, _copy(request)))
        try:
            validate_object_ref(object_type, object_id)
            validate_method(method)
        except GoverseError as error:
            raise CallError(error.status_code, error.message) from error
        key = (object_type, object_id)
        chain = _serving.get()
        if key in chain:
            raise FailedPrecondition(
                f"calling {object_type}/{object_id} from its own call chain "
                f"({' -> '.join(f'{t}/{i}' for t, i in chain)}) would wait for its own turn"
            )
        try:
            response = await self._answer(caller, key, method, request)
        except CallError:
            raise
        except GoverseError as error:
            raise CallError(error.status_code, error.message) from error
        try:
            return wire.unpack(wire.pack(response), response_type)
        except wire.UnpackError as error:
            raise CallError(
                grpc.StatusCode.INTERNAL, f"{object_type}.{method} answered: {error}"
            ) from None

    async def _answer(
        self, caller: Caller, key: tuple[str, str], method: str, request: Message
    ) -> Message:
        answer = self._responses.get((key[0], key[1], method))
        if answer is None:
            hosted = self._objects.get(key)
            if hosted is not None:
                info = hosted._method(method)
                message = info.unpack_request(wire.pack(request), key[0])
                return await hosted._serve(info, message, caller)
            answer = self._responses.get((key[0], None, method))
        if answer is None:
            by = f"{caller.object_type}/{caller.object_id}"
            raise UnansweredCallError(
                f"{by} called {key[0]}/{key[1]}.{method}, which the test neither hosts "
                f"nor answers: env.respond({key[0]!r}, {method!r}, ...) or "
                f"env.create({key[0]}, {key[1]!r})"
            )
        if isinstance(answer, Message):
            return answer
        if isinstance(answer, GoverseError):
            raise CallError(answer.status_code, answer.message)
        response = answer(_copy(request))
        if not isinstance(response, Message):
            raise TypeError(
                f"the response registered for {key[0]}.{method} returned "
                f"{type(response).__qualname__}, not a message"
            )
        return response

    def _push(self, client_ids: Iterable[str], message: Message) -> int:
        # What a node with every gate connected does: a malformed client id (no gate part)
        # is dropped, and so is anything that is not a message.
        if not isinstance(message, Message):
            return 0
        ids = tuple(dict.fromkeys(client_ids))
        if not ids:
            return 0
        self.pushes.append(Pushed(ids, _copy(message)))
        return sum(1 for client_id in ids if gate_of_client(client_id) is not None)

    def _broadcast(self, message: Message) -> int:
        if not isinstance(message, Message):
            return 0
        self.broadcasts.append(_copy(message))
        return 1  # one gate: this environment


__all__ = [
    "HostedObject",
    "ObjectCall",
    "ObjectEnvironment",
    "Pushed",
    "Response",
    "UnansweredCallError",
]
