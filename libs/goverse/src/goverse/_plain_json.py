"""PlainJson: protobuf JSON for plain messages without json_format's per-field Python.

``json_format`` spends ten to twenty microseconds on a small message, one of the larger shares
of an HTTP call on the gate. Most messages an object takes and answers are *plain*: scalar,
enum, repeated and nested plain fields, or a wrapper (``BytesValue``…). For those this module
converts with a plan made once per message type, and gives exactly what ``json_format`` gives
(``ParseDict``; ``MessageToDict`` with ``always_print_fields_with_no_presence``). For anything
else, and for any value it is not sure of (a wrong type, an unknown field, a number out of
range, ``NaN``), it answers :data:`NOT_PLAIN`, and the caller asks ``json_format``: its errors,
and its answer for maps, ``float`` fields, the other well-known types and JSON strings in
number fields, stay the only ones.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any, Final

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

NOT_PLAIN: Final = object()
"""What :class:`PlainJson` answers when ``json_format`` has to."""

WRAPPERS_FILE = "google/protobuf/wrappers.proto"
MAX_DEPTH = 64
"""Nesting of message types a plan follows (``json_format`` refuses 100)."""

_INT32 = frozenset((FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32))
_INT64 = frozenset((FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64))

Convert = Callable[[Any], Any]
"""One value of a field, JSON to protobuf or back; raises :class:`_NotPlain` when unsure."""


class _NotPlain(Exception):
    """The value is one json_format must judge."""


class _Field:
    """What a plan knows of one field: its names and its value's conversions both ways."""

    __slots__ = ("default", "dump", "json_name", "message", "name", "oneof", "parse", "repeated")

    def __init__(self, field: Any, plans: PlainJson, depth: int) -> None:
        self.name: str = field.name
        self.json_name: str = field.json_name
        self.repeated: bool = field.is_repeated
        oneof = field.containing_oneof
        self.oneof: str | None = None if oneof is None else oneof.name
        self.message: _Plan | None = None
        self.parse: Convert
        self.dump: Convert
        if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
            self.message = plans.plan_of(field.message_type, depth + 1)
            if self.message is None:
                raise _NotPlain
            self.parse, self.dump = _not_plain, self.message.dump
        else:
            self.parse, self.dump = _scalar(field)
        # What an unset singular scalar prints (a message field has presence; an unset
        # repeated field prints as a new empty list).
        self.default: Any = None
        if not self.repeated and self.message is None:
            self.default = self.dump(field.default_value)


class _Plan:
    """How to convert one message type: a wrapper's value, or a regular message's fields."""

    def __init__(self, descriptor: Any, plans: PlainJson, depth: int) -> None:
        self.wrapper = descriptor.file.name == WRAPPERS_FILE
        fields = [_Field(field, plans, depth) for field in descriptor.fields]
        self.fields = fields
        self.by_number = {
            field.number: planned for field, planned in zip(descriptor.fields, fields, strict=True)
        }
        # json_format looks a key up by JSON name first, then by the proto name.
        self.by_key = {planned.name: planned for planned in fields}
        self.by_key.update({planned.json_name: planned for planned in fields})
        self.unprinted = [
            planned
            for field, planned in zip(descriptor.fields, fields, strict=True)
            if not field.has_presence
        ]

    def fill(self, value: Any, message: Message) -> None:
        """Sets `message` from the JSON `value`, as ``json_format.ParseDict`` would."""
        if self.wrapper:
            message.value = self.fields[0].parse(value)  # type: ignore[attr-defined]
            return
        if type(value) is not dict:
            raise _NotPlain
        names: set[str] = set()  # json_format's check of one oneof member per message
        for key, item in value.items():
            field = self.by_key.get(key)
            if field is None or key in names:
                raise _NotPlain
            names.add(key)
            if field.oneof is not None and item is not None:
                if field.oneof in names:
                    raise _NotPlain
                names.add(field.oneof)
            if item is None:
                message.ClearField(field.name)
            elif field.repeated:
                self._fill_repeated(field, item, message)
            elif field.message is not None:
                child = getattr(message, field.name)
                child.SetInParent()
                field.message.fill(item, child)
            else:
                setattr(message, field.name, field.parse(item))

    @staticmethod
    def _fill_repeated(field: _Field, items: Any, message: Message) -> None:
        if type(items) is not list:
            raise _NotPlain
        message.ClearField(field.name)
        repeated: Any = getattr(message, field.name)
        if field.message is None:
            repeated.extend([field.parse(item) for item in items])
            return
        for item in items:
            if item is None:
                raise _NotPlain
            field.message.fill(item, repeated.add())

    def dump(self, message: Any) -> Any:
        """`message` as ``json_format.MessageToDict`` prints it (every field printed)."""
        if self.wrapper:
            return self.fields[0].dump(message.value)
        printed: dict[str, Any] = {}
        by_number = self.by_number
        for descriptor, value in message.ListFields():
            field = by_number[descriptor.number]
            if field.repeated:
                printed[field.json_name] = [field.dump(item) for item in value]
            else:
                printed[field.json_name] = field.dump(value)
        for field in self.unprinted:
            if field.json_name not in printed:
                printed[field.json_name] = [] if field.repeated else field.default
        return printed


class PlainJson:
    """Plans per message type (made once, kept for as long as this object), and the two
    conversions with them."""

    def __init__(self) -> None:
        self._plans: dict[Any, _Plan | None] = {}  # by descriptor (upb's or Python's)

    def plan_of(self, descriptor: Any, depth: int = 0) -> _Plan | None:
        """The plan of `descriptor`'s messages; None for a type json_format must convert."""
        if descriptor in self._plans:
            return self._plans[descriptor]
        # A type met again while its plan is made is recursive: not plain (None until then).
        self._plans[descriptor] = None
        plan = None
        if depth < MAX_DEPTH and _may_be_plain(descriptor):
            try:
                plan = _Plan(descriptor, self, depth)
            except _NotPlain:
                plan = None
        self._plans[descriptor] = plan
        return plan

    def parse(self, value: Any, message_type: type[Message]) -> Any:
        """A `message_type` from the decoded JSON `value`, or :data:`NOT_PLAIN`."""
        plan = self.plan_of(message_type.DESCRIPTOR)
        if plan is None:
            return NOT_PLAIN
        message = message_type()
        try:
            plan.fill(value, message)
        except (_NotPlain, ValueError, TypeError, AttributeError, OverflowError):
            # Out of range, a surrogate, a wrong type: json_format words the error.
            return NOT_PLAIN
        return message

    def dump(self, message: Message) -> Any:
        """`message` as a protobuf JSON value, or :data:`NOT_PLAIN`."""
        plan = self.plan_of(message.DESCRIPTOR)
        if plan is None:
            return NOT_PLAIN
        try:
            return plan.dump(message)
        except _NotPlain:
            return NOT_PLAIN


def _may_be_plain(descriptor: Any) -> bool:
    """Whether a type can be plain at all: no map entries, extensions or well-known type but
    the wrappers (their JSON is their value; ``FloatValue``'s float is not plain)."""
    if descriptor.file.name == WRAPPERS_FILE:
        return True
    if descriptor.full_name.startswith("google.protobuf."):
        return False
    if descriptor.GetOptions().map_entry or descriptor.is_extendable:
        return False
    return all(not _is_map(field) for field in descriptor.fields)


def _is_map(field: Any) -> bool:
    message_type = field.message_type
    return message_type is not None and bool(message_type.GetOptions().map_entry)


def _not_plain(value: Any) -> Any:
    raise _NotPlain


def _scalar(field: Any) -> tuple[Convert, Convert]:
    """Parse and dump of a scalar or enum field; _NotPlain for a kind json_format keeps."""
    cpp_type = field.cpp_type
    if cpp_type in _INT32:
        return _parse_int, _same
    if cpp_type in _INT64:
        return _parse_int, str
    if cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
        return _parse_double, _dump_double
    if cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        return _parse_bool, _same
    if cpp_type == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return _parse_bytes, _dump_bytes
        return _parse_str, _same
    if cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        return _enum(field)
    raise _NotPlain  # float: json_format prints the shortest repr that reads back the same


def _same(value: Any) -> Any:
    return value


def _parse_int(value: Any) -> int:
    if type(value) is not int:  # not bool; json_format also takes "12" and 12.0
        raise _NotPlain
    return value


def _parse_double(value: Any) -> float:
    if type(value) is int:
        return float(value)
    if type(value) is not float or not math.isfinite(value):
        raise _NotPlain
    return value


def _dump_double(value: float) -> Any:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _parse_bool(value: Any) -> bool:
    if type(value) is not bool:
        raise _NotPlain
    return value


def _parse_str(value: Any) -> str:
    if type(value) is not str:
        raise _NotPlain
    return value  # a lone surrogate: protobuf refuses it when it is set


def _parse_bytes(value: Any) -> bytes:
    if type(value) is not str:
        raise _NotPlain
    # json_format's reading: URL-safe or standard alphabet, padding optional.
    encoded = value.encode("utf-8")
    return base64.urlsafe_b64decode(encoded + b"=" * (4 - len(encoded) % 4))


def _dump_bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("utf-8")


def _enum(field: Any) -> tuple[Convert, Convert]:
    enum_type = field.enum_type
    if enum_type.full_name.startswith("google.protobuf.") or any(
        value.has_options for value in enum_type.values
    ):
        raise _NotPlain  # NullValue, or names json_format may take from an option
    numbers: dict[str, int] = {value.name: value.number for value in enum_type.values}
    names: dict[int, str] = {value.number: value.name for value in enum_type.values}
    closed = enum_type.is_closed

    def parse(value: Any) -> int:
        number: int | None
        if type(value) is str:
            number = numbers.get(value)
        elif type(value) is int:
            number = value if value in names else None
        else:
            number = None
        if number is None:
            raise _NotPlain
        return number

    def dump(value: int) -> Any:
        name = names.get(value)
        if name is not None:
            return name
        if closed:
            raise _NotPlain
        return value

    return parse, dump


__all__ = ["NOT_PLAIN", "PlainJson"]
