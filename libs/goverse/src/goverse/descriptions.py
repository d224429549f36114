"""Descriptions: object types as a ``DescribeResponse``, and that response as message classes.

A node describes the object types it hosts once, at start (:func:`describe_types`): each
type's callable methods with the full names of their request and response messages, the
messages its objects declare they push (:attr:`goverse.objects.Object.push_types`), and a
``FileDescriptorSet`` holding the whole ``.proto`` file of every one of those messages with
its transitive dependencies. Whoever holds such a response (a gate, the ``goverse`` command
line, a test) turns it into message classes with :class:`Descriptions`, without the
generated modules of the objects' messages, and converts protobuf JSON to and from them.

Errors are :mod:`goverse.errors` errors, answering as a call would (``docs/errors.md``): an
unknown object type :class:`~goverse.errors.NotFound`, an unknown method
:class:`~goverse.errors.Unimplemented`, JSON that is not a valid message of the expected type
(malformed, an unknown field, a value of the wrong type)
:class:`~goverse.errors.InvalidArgument`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message

from goverse import wire
from goverse._object_types import ObjectType
from goverse._plain_json import NOT_PLAIN, PlainJson
from goverse.errors import Internal, InvalidArgument, NotFound, Unimplemented
from goverse.ids import validate_method, validate_object_type
from goverse.v1 import describe_pb2

WELL_KNOWN_PREFIX = "google.protobuf."
"""Full names of the well-known types, whose JSON is not always an object."""

__all__ = [
    "Descriptions",
    "MethodTypes",
    "describe_types",
    "file_set",
    "ordered_files",
]


def _files_of(message_types: Iterable[type[Message]]) -> list[FileDescriptor]:
    """The files of `message_types` and every file they import, transitively, each once, a
    file after the files it imports (the order a descriptor pool must be given them in)."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: Any) -> None:  # the upb and the pure-Python descriptor types alike
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for message_type in message_types:
        visit(message_type.DESCRIPTOR.file)
    return ordered


def file_set(message_types: Iterable[type[Message]]) -> descriptor_pb2.FileDescriptorSet:
    """The ``FileDescriptorSet`` of the whole files of `message_types` and their dependencies."""
    files = descriptor_pb2.FileDescriptorSet()
    for file in _files_of(message_types):
        file.CopyToProto(files.file.add())
    return files


def describe_types(
    types: Mapping[str, ObjectType], described_unix_ms: int
) -> describe_pb2.DescribeResponse:
    """The description of `types`: every type and method by name, ascending, and the files of
    every request, response and pushed message."""
    response = describe_pb2.DescribeResponse(described_unix_ms=described_unix_ms)
    messages: list[type[Message]] = []
    for name in sorted(types):
        found = types[name]
        description = response.types.add(name=name)
        for method_name in sorted(found.methods):
            method = found.methods[method_name]
            description.methods.add(
                name=method_name,
                request_type=method.request_type_name,
                response_type=method.response_type_name,
            )
            messages += [method.request_type, method.response_type]
        pushed = sorted(found.push_types, key=lambda cls: cls.DESCRIPTOR.full_name)
        description.push_types.extend(cls.DESCRIPTOR.full_name for cls in pushed)
        messages += pushed
    response.files.CopyFrom(file_set(messages))
    return response


@dataclass(frozen=True)
class MethodTypes:
    """The message classes of one method, built from a description."""

    object_type: str
    method: str
    request: type[Message]
    response: type[Message]


def ordered_files(
    files: Iterable[descriptor_pb2.FileDescriptorProto],
) -> list[descriptor_pb2.FileDescriptorProto]:
    """`files`, each name once (the last of a name wins), a file after the ones it imports
    that are in `files` (a set made by another implementation may list them in any order)."""
    by_name = {file.name: file for file in files}
    ordered: list[descriptor_pb2.FileDescriptorProto] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in by_name:
            return
        seen.add(name)
        for dependency in by_name[name].dependency:
            visit(dependency)
        ordered.append(by_name[name])

    for name in by_name:
        visit(name)
    return ordered


class Descriptions:
    """A ``DescribeResponse`` as message classes: look a method up, convert JSON.

    The classes live in a descriptor pool of their own, built from the response's files, so
    they never clash with the generated modules a process may also have imported (and a
    type whose messages changed in a rollout gets its new shape). Raises
    :class:`~goverse.errors.InvalidArgument` when the files do not make a consistent pool (a
    file missing one it imports, two definitions of one name).
    """

    def __init__(self, response: describe_pb2.DescribeResponse) -> None:
        self.response = response
        self.pool = descriptor_pool.DescriptorPool()
        try:
            for file in ordered_files(response.files.file):
                self.pool.AddSerializedFile(file.SerializeToString())
        except (TypeError, ValueError) as error:
            raise InvalidArgument(f"the description's files do not build: {error}") from None
        self._types = {description.name: description for description in response.types}
        self._classes: dict[str, type[Message]] = {}
        self._methods: dict[tuple[str, str], MethodTypes] = {}
        """Methods found so far (never a miss: bounded by the methods described)."""
        self._plain = PlainJson()
        """The JSON conversions of plain messages, without json_format."""

    @property
    def types(self) -> Mapping[str, describe_pb2.ObjectTypeDescription]:
        """The described object types by name."""
        return self._types

    def message_class(self, full_name: str) -> type[Message]:
        """The class of the message named `full_name` (``goverse.examples.v1.ChatMessage``);
        NotFound when the description's files do not define it."""
        cls = self._classes.get(full_name)
        if cls is None:
            try:
                descriptor = self.pool.FindMessageTypeByName(full_name)
            except KeyError:
                raise NotFound(f"no described message is named {full_name!r}") from None
            cls = message_factory.GetMessageClass(descriptor)
            self._classes[full_name] = cls
        return cls

    def has_message(self, full_name: str) -> bool:
        """Whether the description's files define the message `full_name`."""
        try:
            self.pool.FindMessageTypeByName(full_name)
        except KeyError:
            return False
        return True

    def method(self, object_type: str, method: str) -> MethodTypes:
        """The request and response classes of `object_type`'s `method`: InvalidArgument for
        a malformed type or method name, NotFound for an unknown type, Unimplemented for a
        method the type does not have (as a call answers). Found once per method: an HTTP gate looks
        one up for every call."""
        found = self._methods.get((object_type, method))
        if found is None:
            found = self._methods[(object_type, method)] = self._find_method(object_type, method)
        return found

    def _find_method(self, object_type: str, method: str) -> MethodTypes:
        validate_object_type(object_type)
        description = self._types.get(object_type)
        if description is None:
            raise NotFound(f"unknown object type {object_type!r}")
        validate_method(method)
        for candidate in description.methods:
            if candidate.name == method:
                return MethodTypes(
                    object_type,
                    method,
                    self.message_class(candidate.request_type),
                    self.message_class(candidate.response_type),
                )
        raise Unimplemented(f"{object_type} has no method {method!r}")

    def from_json(self, message_type: type[Message], text: str | bytes) -> Message:
        """A `message_type` parsed from protobuf JSON `text`; InvalidArgument when it is not
        JSON, has a field the message does not, or a value of the wrong type."""
        try:
            value = json.loads(text)
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            # RecursionError: arrays or objects nested deeper than Python's stack (a body of
            # a thousand "["), malformed input like any other, not a failure of the gate.
            raise InvalidArgument(f"the body is not JSON: {error}") from None
        return self.from_dict(message_type, value)

    def from_dict(self, message_type: type[Message], value: Any) -> Message:
        """A `message_type` from a decoded JSON value; InvalidArgument as :meth:`from_json`."""
        name = message_type.DESCRIPTOR.full_name
        # Well-known types have JSON forms of their own (a StringValue is a string).
        if not isinstance(value, dict) and not name.startswith(WELL_KNOWN_PREFIX):
            raise InvalidArgument(f"a {name} is a JSON object, not {type(value).__name__}")
        parsed = self._plain.parse(value, message_type)
        if parsed is not NOT_PLAIN:
            return parsed  # type: ignore[no-any-return]
        message = message_type()
        try:
            json_format.ParseDict(value, message, descriptor_pool=self.pool)
        except (
            json_format.ParseError,
            TypeError,
            ValueError,
            ArithmeticError,
            AttributeError,
            KeyError,
            SystemError,
        ) as error:
            # json_format lets errors of bad input through: OverflowError for an enum given
            # Infinity, SystemError (upb's enum lookup) for a string with a lone surrogate,
            # AttributeError for an Any whose "@type" is not a string, KeyError for a
            # well-known type in an Any without its "value".
            # json_format's messages span lines ("Available Fields: …"): keep an error one line.
            raise InvalidArgument(f"not a valid {name}: {' '.join(str(error).split())}") from None
        return message

    def to_dict(self, message: Message) -> Any:
        """`message` as a protobuf JSON value: a dict, field names in lowerCamelCase, every
        field printed (a zero counter shows as 0, not as an absent field); a well-known type
        has its own JSON form (a ``StringValue`` is a string, a ``Timestamp`` a string)."""
        result = self._plain.dump(message)
        if result is not NOT_PLAIN:
            return result
        result = json_format.MessageToDict(
            message,
            descriptor_pool=self.pool,
            always_print_fields_with_no_presence=True,
        )
        return result

    def to_json(self, message: Message) -> str:
        """`message` as protobuf JSON text, on one line."""
        return json.dumps(self.to_dict(message), separators=(",", ":"))

    def push_dict(self, packed: any_pb2.Any) -> dict[str, Any]:
        """A pushed message as ``{"type": <full name>, "message": <protobuf JSON>}``; one of a
        type the description does not define (or that does not parse, or that protobuf JSON
        cannot write: a ``Value`` holding NaN, an ``Any`` of an undescribed type) as
        ``{"type": …, "base64": <its bytes>}``: what ``goverse watch`` prints and an HTTP gate
        streams. Never raises for what was pushed: an HTTP gate's event stream would end."""
        try:
            return {"type": packed.TypeName(), "message": self.to_dict(self.unpack(packed))}
        except (NotFound, InvalidArgument, json_format.Error, ValueError, TypeError):
            encoded = base64.b64encode(packed.value).decode("ascii")
            return {"type": packed.TypeName(), "base64": encoded}

    def response_dict(self, method: MethodTypes, packed: any_pb2.Any) -> Any:
        """A call's packed response as protobuf JSON; Internal when it is not of the method's
        response type (as the SDK answers such a reply)."""
        try:
            return self.to_dict(wire.unpack(packed, method.response))
        except wire.UnpackError as error:
            raise Internal(f"{method.object_type}.{method.method} answered: {error}") from None

    def unpack(self, packed: any_pb2.Any) -> Message:
        """The message `packed` holds, as a class of this description (a push, a reply);
        NotFound when its type is not described, InvalidArgument when it does not parse."""
        try:
            return wire.unpack(packed, self.message_class(packed.TypeName()))
        except wire.UnpackError as error:
            raise InvalidArgument(str(error)) from None
