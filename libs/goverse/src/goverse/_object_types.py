"""Object types: which methods of an :class:`~goverse.objects.Object` subclass are callable.

The rules are written here once, for the node that hosts objects and for
:mod:`goverse.testing` that hosts them in a test: a callable method is a coroutine function
whose name starts with an upper-case letter and that takes one argument annotated with a
protobuf message class and returns one. Asking for any other method answers UNIMPLEMENTED; a
request of another type answers INVALID_ARGUMENT; a result of another type answers INTERNAL.

Nothing here logs: what is left out of a table is returned with the reason, for the caller to
report its own way (the node logs it, a test harness puts it in its error messages).
"""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, ModuleType
from typing import Any, TypeGuard

from google.protobuf import any_pb2
from google.protobuf.message import Message

from goverse import wire
from goverse.errors import GoverseError, Internal, InvalidArgument, Unimplemented
from goverse.ids import validate_method, validate_object_type
from goverse.objects import Durability, Object, ObjectDefinitionError, state_type_of


@dataclass(frozen=True)
class MethodInfo:
    """One callable method: ``async def Name(self, request: Req) -> Resp``."""

    name: str
    request_type: type[Message]
    response_type: type[Message]
    function: Callable[[Object, Message], Awaitable[Message]]

    @property
    def request_type_name(self) -> str:
        """Full protobuf name of the request type, e.g. ``goverse.examples.v1.IncrementRequest``."""
        return self.request_type.DESCRIPTOR.full_name

    @property
    def response_type_name(self) -> str:
        return self.response_type.DESCRIPTOR.full_name

    def unpack_request(self, packed: any_pb2.Any, object_type: str) -> Message:
        """The request as this method's declared type; InvalidArgument when it is not one."""
        try:
            return wire.unpack(packed, self.request_type)
        except wire.UnpackError as error:
            raise InvalidArgument(f"the request of {object_type}.{self.name}: {error}") from None

    def check_response(self, result: object, object_type: str) -> None:
        """Raises Internal unless `result` is of this method's declared response type."""
        if not isinstance(result, self.response_type):
            raise Internal(
                f"{object_type}.{self.name} returned {type(result).__qualname__}, "
                f"not {self.response_type_name}"
            )


@dataclass(frozen=True)
class ObjectType:
    """A hosted class and its callable methods, by name."""

    name: str
    cls: type[Object]
    methods: Mapping[str, MethodInfo]
    rejected: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Upper-case methods that are not callable, with the reason (for logs and test errors)."""
    state_type: type[Message] | None = None
    """The state message of a :class:`~goverse.objects.Stateful` type; None: stateless."""
    durability: Durability = Durability.EACH_CALL
    """When a stateful type's state is saved."""
    push_types: tuple[type[Message], ...] = ()
    """The messages its objects declare they push (:attr:`Object.push_types`)."""

    def method(self, name: str) -> MethodInfo:
        """The callable method `name`; InvalidArgument for a malformed name, Unimplemented when
        there is no such callable method."""
        validate_method(name)
        info = self.methods.get(name)
        if info is None:
            raise Unimplemented(f"{self.name} has no method {name!r}")
        return info


def _is_message_type(value: Any) -> TypeGuard[type[Message]]:
    return isinstance(value, type) and issubclass(value, Message) and value is not Message


def _method_info(cls: type[Object], name: str, function: Any) -> MethodInfo | str:
    """The method's info, or why it is not callable."""
    if not inspect.iscoroutinefunction(function):
        return "it is not an async def"
    parameters = list(inspect.signature(function).parameters.values())
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(parameters) != 2 or any(p.kind not in positional for p in parameters):
        return "it does not take exactly one request argument"
    try:
        hints = typing.get_type_hints(function)
    except Exception as error:
        raise ObjectDefinitionError(
            f"{cls.__module__}.{cls.__qualname__}.{name}: cannot resolve its type "
            f"annotations ({type(error).__name__}: {error})"
        ) from error
    request_type = hints.get(parameters[1].name)
    response_type = hints.get("return")
    if not _is_message_type(request_type):
        return "its request parameter is not annotated with a protobuf message class"
    if not _is_message_type(response_type):
        return "its return type is not a protobuf message class"
    return MethodInfo(name, request_type, response_type, function)


def scan_methods(cls: type[Object]) -> tuple[dict[str, MethodInfo], dict[str, str]]:
    """The callable methods of `cls` (inherited ones included) by name, and the upper-case
    methods that break the rules, with the reason.

    Raises :class:`~goverse.objects.ObjectDefinitionError` when a method's annotations cannot
    be resolved (a name only imported under ``TYPE_CHECKING``, a typo).
    """
    table: dict[str, MethodInfo] = {}
    rejected: dict[str, str] = {}
    for name in sorted(dir(cls)):
        if not name[:1].isupper():
            continue
        function = inspect.getattr_static(cls, name)
        if isinstance(function, staticmethod | classmethod) or not callable(function):
            continue
        info = _method_info(cls, name, function)
        if isinstance(info, str):
            rejected[name] = info
        else:
            table[name] = info
    return table, rejected


def object_type_of(cls: type[Object]) -> ObjectType:
    """The type name and method table of `cls`; ObjectDefinitionError when its type name is not
    a valid name or a method's annotations cannot be resolved."""
    name = cls.object_type()
    try:
        validate_object_type(name)
    except GoverseError as error:
        where = f"{cls.__module__}.{cls.__qualname__}"
        raise ObjectDefinitionError(f"{where}: {error.message}") from error
    methods, rejected = scan_methods(cls)
    state_type = state_type_of(cls)
    durability = getattr(cls, "durability", Durability.EACH_CALL)
    if not isinstance(durability, Durability):
        raise ObjectDefinitionError(
            f"{cls.__module__}.{cls.__qualname__}.durability is {durability!r}, not a "
            "goverse.objects.Durability"
        )
    return ObjectType(
        name,
        cls,
        MappingProxyType(methods),
        MappingProxyType(rejected),
        state_type=state_type,
        durability=durability,
        push_types=_push_types_of(cls),
    )


def _push_types_of(cls: type[Object]) -> tuple[type[Message], ...]:
    """`cls.push_types`, checked: ObjectDefinitionError unless it holds message classes."""
    declared = getattr(cls, "push_types", ())
    if not isinstance(declared, tuple | list) or not all(map(_is_message_type, declared)):
        raise ObjectDefinitionError(
            f"{cls.__module__}.{cls.__qualname__}.push_types is {declared!r}, not a tuple of "
            "protobuf message classes"
        )
    return tuple(declared)


def _classes_defined_in(module: ModuleType) -> list[type[Object]]:
    found = []
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, Object)
            and value is not Object
            and value.__module__ == module.__name__
            and not inspect.isabstract(value)
        ):
            found.append(value)
    return found


def load_object_types(modules: Iterable[str]) -> dict[str, ObjectType]:
    """Imports `modules` and describes every :class:`Object` subclass each one defines.

    Raises :class:`~goverse.objects.ObjectDefinitionError` when a module cannot be imported,
    defines no object type, or when two classes claim the same type name.
    """
    types: dict[str, ObjectType] = {}
    origin: dict[str, str] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as error:
            raise ObjectDefinitionError(
                f"cannot import object module {module_name!r}: {type(error).__name__}: {error}"
            ) from error
        classes = _classes_defined_in(module)
        if not classes:
            raise ObjectDefinitionError(f"object module {module_name!r} defines no Object subclass")
        for cls in classes:
            found = object_type_of(cls)
            where = f"{cls.__module__}.{cls.__qualname__}"
            if found.name in types:
                raise ObjectDefinitionError(
                    f"object type {found.name!r} is defined twice: by {origin[found.name]} "
                    f"and by {where}"
                )
            types[found.name] = found
            origin[found.name] = where
    return types


__all__ = [
    "MethodInfo",
    "ObjectType",
    "load_object_types",
    "object_type_of",
    "scan_methods",
]
