"""Identifiers: validation of object references, gate ids and the client-id format."""

from __future__ import annotations

import re
import secrets

from goverse.errors import InvalidArgument

MAX_OBJECT_ID_BYTES = 256
MAX_NAME_LENGTH = 128
MAX_GATE_ID_LENGTH = 63

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_GATE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def validate_object_type(object_type: str) -> None:
    if not object_type:
        raise InvalidArgument("object_type is empty")
    if len(object_type) > MAX_NAME_LENGTH or not _NAME.match(object_type):
        raise InvalidArgument(
            f"object_type {object_type[:MAX_NAME_LENGTH]!r} is not a name "
            f"(letters, digits, '_' and '.', at most {MAX_NAME_LENGTH} characters)"
        )


def validate_object_id(object_id: str) -> None:
    if not object_id:
        raise InvalidArgument("object_id is empty")
    try:
        size = len(object_id.encode())
    except UnicodeEncodeError:
        # A lone surrogate: no UTF-8 text (and no protobuf string) can carry it.
        raise InvalidArgument("object_id is not valid Unicode text") from None
    if size > MAX_OBJECT_ID_BYTES:
        raise InvalidArgument(f"object_id is longer than {MAX_OBJECT_ID_BYTES} bytes")
    if _CONTROL.search(object_id):
        raise InvalidArgument("object_id contains control characters")


def validate_method(method: str) -> None:
    if not method:
        raise InvalidArgument("method is empty")
    if len(method) > MAX_NAME_LENGTH or not _NAME.match(method):
        raise InvalidArgument(f"method {method[:MAX_NAME_LENGTH]!r} is not a method name")


def validate_object_ref(object_type: str, object_id: str) -> None:
    """Raises :class:`InvalidArgument` unless both parts of an object reference are well formed."""
    validate_object_type(object_type)
    validate_object_id(object_id)


def gate_id_problem(gate_id: str) -> str | None:
    """Why `gate_id` is not a valid gate id, or None when it is."""
    if not gate_id:
        return "the gate id is empty"
    if len(gate_id) > MAX_GATE_ID_LENGTH or not _GATE_ID.match(gate_id):
        return (
            f"the gate id {gate_id[:MAX_GATE_ID_LENGTH]!r} must be 1-{MAX_GATE_ID_LENGTH} "
            "letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return None


def new_client_id(gate_id: str) -> str:
    """A fresh client id of the form ``<gate-id>/<random>``."""
    return f"{gate_id}/{secrets.token_hex(8)}"


def gate_of_client(client_id: str) -> str | None:
    """The gate id part of a client id, or None when the id is malformed."""
    gate_id, sep, rest = client_id.partition("/")
    if not sep or not rest or gate_id_problem(gate_id) is not None:
        return None
    return gate_id
