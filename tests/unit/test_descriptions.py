"""goverse.descriptions: what a node describes, and message classes and JSON built from it."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.struct_pb2 import Struct
from google.protobuf.wrappers_pb2 import StringValue

from goverse import wire
from goverse._object_types import object_type_of
from goverse.descriptions import Descriptions, describe_types, ordered_files
from goverse.errors import InvalidArgument, NotFound, Unimplemented
from goverse.examples.counter import Counter
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from goverse.objects import Object, ObjectDefinitionError


class Announcer(Object):
    """Pushes a message defined in a file none of its methods' messages are in."""

    push_types = (Struct,)

    async def Say(self, request: StringValue) -> CounterValue:
        return CounterValue()


def test_files_hold_pushed_messages_and_every_import_in_dependency_order() -> None:
    """The files of a declared pushed message are described, and every file comes after the
    files it imports (a descriptor pool takes them in that order)."""
    response = describe_types({"Announcer": object_type_of(Announcer)}, 1)
    names = [file.name for file in response.files.file]
    assert "google/protobuf/struct.proto" in names
    assert "google/protobuf/wrappers.proto" in names
    assert "goverse/examples/v1/counter.proto" in names
    assert list(response.types[0].push_types) == ["google.protobuf.Struct"]
    descriptions = Descriptions(response)
    struct = Struct()
    struct.update({"a": "b"})
    pushed = descriptions.unpack(wire.pack(struct))
    assert descriptions.to_dict(pushed) == {"a": "b"}


def test_push_types_that_are_not_message_classes_fail_the_definition() -> None:
    class Broken(Object):
        push_types = ("ChatMessage",)  # type: ignore[assignment]

    with pytest.raises(ObjectDefinitionError, match="push_types"):
        object_type_of(Broken)


def test_files_in_any_order_still_build() -> None:
    """A set listing a file before its imports (another implementation's) is reordered."""
    response = describe_types({"Counter": object_type_of(Counter)}, 1)
    files = list(reversed(response.files.file))
    assert [f.name for f in ordered_files(files)] == [f.name for f in response.files.file]
    shuffled = type(response)()
    shuffled.types.extend(response.types)
    shuffled.files.file.extend(files)
    assert Descriptions(shuffled).method("Counter", "Increment").request is not IncrementRequest


def test_a_file_missing_an_import_is_invalid() -> None:
    broken = descriptor_pb2.FileDescriptorProto(name="x.proto", dependency=["missing.proto"])
    response = describe_types({}, 1)
    response.files.file.append(broken)
    with pytest.raises(InvalidArgument):
        Descriptions(response)


def test_lookups_and_json_answer_as_calls_do() -> None:
    descriptions = Descriptions(describe_types({"Counter": object_type_of(Counter)}, 1))
    with pytest.raises(NotFound):
        descriptions.method("Nope", "Get")
    with pytest.raises(Unimplemented):
        descriptions.method("Counter", "Nope")
    with pytest.raises(InvalidArgument):
        descriptions.method("Counter", "no such")
    for malformed in ("Coun ter", "T" * 129, ""):  # not a name, as a call's check says
        with pytest.raises(InvalidArgument):
            descriptions.method(malformed, "Get")
    with pytest.raises(NotFound):
        descriptions.message_class("goverse.examples.v1.Nope")
    increment = descriptions.method("Counter", "Increment")
    assert descriptions.method("Counter", "Increment") is increment  # found once
    with pytest.raises(Unimplemented):  # a miss is never remembered as a method
        descriptions.method("Counter", "Nope")
    for bad in (
        "{",
        '{"by": "x"}',
        '{"nope": 1}',
        "[1]",
        '{"by": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ):
        with pytest.raises(InvalidArgument):
            descriptions.from_json(increment.request, bad)
    request = descriptions.from_json(increment.request, '{"by": 3}')
    assert IncrementRequest.FromString(request.SerializeToString()).by == 3
    assert descriptions.to_json(increment.response()) == '{"value":"0"}'
