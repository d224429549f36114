"""Object types: the classes loaded from ``--objects`` and each one's table of callable methods."""

from __future__ import annotations

import importlib
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import Any, TypeGuard

import structlog
from google.protobuf.message import Message

from goverse.errors import GoverseError
from goverse.ids import validate_object_type
from goverse.objects import Object
from goverse.server import StartupError

log = structlog.get_logger(__name__)


class ObjectLoadError(StartupError):
    """An ``--objects`` module cannot be imported or defines unusable object types."""


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


@dataclass(frozen=True)
class ObjectType:
    """A hosted class and its callable methods, by name."""

    name: str
    cls: type[Object]
    methods: Mapping[str, MethodInfo]


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
        raise ObjectLoadError(
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


def method_table(cls: type[Object]) -> dict[str, MethodInfo]:
    """The callable methods of `cls` (inherited ones included), by name.

    Callable methods are coroutine functions whose name starts with an upper-case letter, that
    take one argument annotated with a protobuf message class and return one. Upper-case
    methods that do not fit are logged and are not callable.
    """
    table: dict[str, MethodInfo] = {}
    for name in sorted(dir(cls)):
        if not name[:1].isupper():
            continue
        function = inspect.getattr_static(cls, name)
        if isinstance(function, staticmethod | classmethod) or not callable(function):
            continue
        info = _method_info(cls, name, function)
        if isinstance(info, str):
            log.warning(
                "method is not callable",
                object_type=cls.object_type(),
                method=name,
                reason=info,
            )
            continue
        table[name] = info
    return table


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
    """Imports `modules` and registers every :class:`Object` subclass each one defines.

    Raises :class:`ObjectLoadError` when a module cannot be imported, defines no object type,
    or when two classes claim the same type name.
    """
    types: dict[str, ObjectType] = {}
    origin: dict[str, str] = {}
    for module_name in modules:
        try:
            module = importlib.import_module(module_name)
        except Exception as error:
            raise ObjectLoadError(
                f"cannot import object module {module_name!r}: {type(error).__name__}: {error}"
            ) from error
        classes = _classes_defined_in(module)
        if not classes:
            raise ObjectLoadError(f"object module {module_name!r} defines no Object subclass")
        for cls in classes:
            name = cls.object_type()
            where = f"{cls.__module__}.{cls.__qualname__}"
            try:
                validate_object_type(name)
            except GoverseError as error:
                raise ObjectLoadError(f"{where}: {error.message}") from error
            if name in types:
                raise ObjectLoadError(
                    f"object type {name!r} is defined twice: by {origin[name]} and by {where}"
                )
            types[name] = ObjectType(name, cls, MappingProxyType(method_table(cls)))
            origin[name] = where
    return types


__all__ = [
    "MethodInfo",
    "ObjectLoadError",
    "ObjectType",
    "load_object_types",
    "method_table",
]
