"""Object types on a node: loading ``--objects`` as a start-up step, and logging what is left out.

Which methods are callable is decided by :mod:`goverse._object_types`, shared with
:mod:`goverse.testing`; this module only turns its errors into a start-up error (exit status 2)
and logs the methods that are not callable.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import structlog

from goverse import _object_types
from goverse._object_types import MethodInfo, ObjectType
from goverse.objects import Object, ObjectDefinitionError
from goverse.server import StartupError

log = structlog.get_logger(__name__)


class ObjectLoadError(ObjectDefinitionError, StartupError):
    """An ``--objects`` module cannot be imported or defines unusable object types.

    The node's form of :class:`goverse.objects.ObjectDefinitionError`: also a StartupError,
    so ``goverse-node`` exits with status 2.
    """


@contextlib.contextmanager
def _as_load_error() -> Iterator[None]:
    try:
        yield
    except ObjectDefinitionError as error:
        raise ObjectLoadError(str(error)) from error


def _log_rejected(object_type: str, rejected: Mapping[str, str]) -> None:
    for method, reason in rejected.items():
        log.warning("method is not callable", object_type=object_type, method=method, reason=reason)


def method_table(cls: type[Object]) -> dict[str, MethodInfo]:
    """The callable methods of `cls` (inherited ones included), by name.

    Upper-case methods that break the rules of :mod:`goverse._object_types` are logged and
    are not callable.
    """
    with _as_load_error():
        table, rejected = _object_types.scan_methods(cls)
    _log_rejected(cls.object_type(), rejected)
    return table


def load_object_types(modules: Iterable[str]) -> dict[str, ObjectType]:
    """Imports `modules` and registers every :class:`Object` subclass each one defines.

    Raises :class:`ObjectLoadError` when a module cannot be imported, defines no object type,
    or when two classes claim the same type name.
    """
    with _as_load_error():
        types = _object_types.load_object_types(modules)
    for found in types.values():
        _log_rejected(found.name, found.rejected)
    return types


__all__ = [
    "MethodInfo",
    "ObjectLoadError",
    "ObjectType",
    "load_object_types",
    "method_table",
]
