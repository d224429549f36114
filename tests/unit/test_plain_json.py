"""goverse._plain_json: the same JSON as json_format for plain messages, json_format for the rest.

Each case is checked against json_format itself: a parse through :class:`Descriptions` (the
plain path, then json_format) must give json_format's message, or fail with json_format's
error; a dump must print json_format's text, keys in the same order.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    json_format,
    message_factory,
    timestamp_pb2,
)
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BoolValue, BytesValue, FloatValue, Int64Value

from goverse._plain_json import NOT_PLAIN, PlainJson
from goverse.descriptions import Descriptions
from goverse.errors import InvalidArgument
from goverse.v1 import describe_pb2

F = descriptor_pb2.FieldDescriptorProto
SCALARS = {
    "i32": F.TYPE_INT32,
    "i64": F.TYPE_INT64,
    "u32": F.TYPE_UINT32,
    "u64": F.TYPE_UINT64,
    "s32": F.TYPE_SINT32,
    "s64": F.TYPE_SINT64,
    "f32": F.TYPE_FIXED32,
    "f64": F.TYPE_FIXED64,
    "sf32": F.TYPE_SFIXED32,
    "sf64": F.TYPE_SFIXED64,
    "flag": F.TYPE_BOOL,
    "text": F.TYPE_STRING,
    "blob": F.TYPE_BYTES,
    "ratio": F.TYPE_DOUBLE,
}


def _field(
    message: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    kind: int,
    type_name: str = "",
    *,
    repeated: bool = False,
    **options: Any,
) -> None:
    """Adds a field to `message`: `type_name` for an enum or a message, `options` such as
    ``oneof_index``."""
    label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
    field = message.field.add(name=name, number=number, type=kind, label=label, **options)
    if type_name:  # set at all, even empty, it says the field is of a named type
        field.type_name = type_name


def _file() -> descriptor_pb2.FileDescriptorProto:
    """A proto3 file with every kind of field, plain and not."""
    file = descriptor_pb2.FileDescriptorProto(
        name="plain_test.proto",
        package="plaintest",
        syntax="proto3",
        dependency=[
            "google/protobuf/wrappers.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/any.proto",
        ],
    )
    color = file.enum_type.add(name="Color")
    for number, name in enumerate(["COLOR_UNSET", "RED", "GREEN"]):
        color.value.add(name=name, number=number)
    inner = file.message_type.add(name="Inner")
    _field(inner, "note_text", 1, F.TYPE_STRING)
    _field(inner, "count", 2, F.TYPE_INT64)

    plain = file.message_type.add(name="Plain")
    for index, (name, kind) in enumerate(SCALARS.items()):
        _field(plain, f"{name}_one", 2 * index + 1, kind)
        _field(plain, f"{name}_many", 2 * index + 2, kind, repeated=True)
    _field(plain, "color", 40, F.TYPE_ENUM, ".plaintest.Color")
    _field(plain, "colors", 41, F.TYPE_ENUM, ".plaintest.Color", repeated=True)
    _field(plain, "inner", 42, F.TYPE_MESSAGE, ".plaintest.Inner")
    _field(plain, "inners", 43, F.TYPE_MESSAGE, ".plaintest.Inner", repeated=True)
    _field(plain, "wrapped", 44, F.TYPE_MESSAGE, ".google.protobuf.Int32Value")
    plain.oneof_decl.add(name="choice")
    _field(plain, "pick_text", 45, F.TYPE_STRING, oneof_index=0)
    _field(plain, "pick_number", 46, F.TYPE_INT32, oneof_index=0)
    plain.oneof_decl.add(name="_maybe")
    _field(plain, "maybe", 47, F.TYPE_INT32, oneof_index=1, proto3_optional=True)

    mapped = file.message_type.add(name="Mapped")
    entry = mapped.nested_type.add(name="ScoresEntry")
    entry.options.map_entry = True
    _field(entry, "key", 1, F.TYPE_STRING)
    _field(entry, "value", 2, F.TYPE_INT32)
    _field(mapped, "scores", 1, F.TYPE_MESSAGE, ".plaintest.Mapped.ScoresEntry", repeated=True)
    _field(
        file.message_type.add(name="Timed"), "at", 1, F.TYPE_MESSAGE, ".google.protobuf.Timestamp"
    )
    _field(file.message_type.add(name="Packed"), "a", 1, F.TYPE_MESSAGE, ".google.protobuf.Any")
    _field(file.message_type.add(name="Floaty"), "level", 1, F.TYPE_FLOAT)
    tree = file.message_type.add(name="Tree")
    _field(tree, "children", 1, F.TYPE_MESSAGE, ".plaintest.Tree", repeated=True)
    return file


def _descriptions() -> Descriptions:
    response = describe_pb2.DescribeResponse()
    for module in (BytesValue, timestamp_pb2.Timestamp, any_pb2.Any):
        module.DESCRIPTOR.file.CopyToProto(response.files.file.add())
    response.files.file.append(_file())
    return Descriptions(response)


DESCRIPTIONS = _descriptions()
POOL = DESCRIPTIONS.pool


def _cls(name: str) -> type[Message]:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"plaintest.{name}"))


PLAIN = _cls("Plain")


def _reference_parse(message_type: type[Message], value: Any) -> bytes | str:
    """json_format's answer: the message's bytes, or the error Descriptions makes of its
    failure."""
    return _parse(message_type, value, DESCRIPTIONS_JSON_FORMAT_ONLY)


def _parse(
    message_type: type[Message], value: Any, descriptions: Descriptions | None = None
) -> bytes | str:
    """The bytes (not ``==``, which takes -0.0 for 0.0) of the message parsed, or the error."""
    try:
        parsed = (descriptions or DESCRIPTIONS).from_dict(message_type, value)
    except InvalidArgument as error:
        return str(error)
    return parsed.SerializeToString(deterministic=True)


class _JsonFormatOnly(PlainJson):
    """Plans nothing: every conversion goes to json_format, the reference."""

    def plan_of(self, descriptor: Any, depth: int = 0) -> None:
        return None


DESCRIPTIONS_JSON_FORMAT_ONLY = _descriptions()
DESCRIPTIONS_JSON_FORMAT_ONLY._plain = _JsonFormatOnly()


def _values(rng: random.Random) -> list[Any]:
    """JSON values of every kind, good for some fields and wrong for others."""
    return [
        0,
        1,
        -1,
        rng.randint(-(2**31), 2**31 - 1),
        2**31,
        2**32,
        2**63,
        -(2**63) - 1,
        2**64,
        1.5,
        2.0,
        -0.0,
        1e300,
        float("nan"),
        float("inf"),
        True,
        False,
        None,
        "",
        "12",
        " 12",
        "1.5",
        "NaN",
        "Infinity",
        "aGVsbG8",
        "aGVsbG8=",
        "a-_b",
        "a+/b",
        "abc",
        "\u00e9t\u00e9 \U0001f600",
        "\ud800",
        "RED",
        "BLUE",
        [],
        [1, 2],
        [1, None],
        ["RED", 2],
        ["aGk=", "x"],
        {},
        {"noteText": "hi", "count": "7"},
        {"note_text": "hi", "count": 7},
        {"count": 1.5},
        {"unknown": 1},
        [{"count": 1}, {"noteText": "a"}],
        [{"count": 1}, None],
    ]


def _keys() -> list[str]:
    fields = PLAIN.DESCRIPTOR.fields
    return [f.json_name for f in fields] + [f.name for f in fields] + ["nope", "choice"]


def test_parses_as_json_format_does_for_random_objects() -> None:
    """Thousands of objects mixing every field with every kind of value: same message, or
    the same error."""
    rng = random.Random(20261203)
    values, keys = _values(rng), _keys()
    plain_hits = 0
    for _ in range(4000):
        value = {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(0, 4))}
        expected = _reference_parse(PLAIN, value)
        assert _parse(PLAIN, value) == expected, value
        plain_hits += DESCRIPTIONS._plain.parse(value, PLAIN) is not NOT_PLAIN
    assert plain_hits > 400  # the plain path took a good share, not json_format every time


@pytest.mark.parametrize(
    "value",
    [
        {"i32One": 5, "i32_one": None},  # a field set, then cleared by its other name
        {"pickText": "a", "pickNumber": 2},  # two members of one oneof
        {"pickText": None, "pickNumber": 2},
        {"pickText": "a", "choice": 1},
        {"maybe": 0},
        {"maybe": None},
        {"inner": {}},
        {"inner": None},
        {"inner": []},
        {"wrapped": 3},
        {"wrapped": None},
        {"wrapped": "3"},
        {"wrapped": {"value": 3}},
        {"inners": [{}, {"count": 2}]},
        {"colors": [0, "GREEN", 7]},
        {"color": 7},
        {"color": "GREEN"},
        {"blobOne": "!!!"},
        {"blobOne": "a"},
        {"textMany": ["a", 1]},
        {"ratioOne": 3},
        {"ratioMany": [1, 2.5, "3"]},
        {"u64One": -1},
        {"i64One": 2**63 - 1},
    ],
)
def test_parses_edge_cases_as_json_format_does(value: dict[str, Any]) -> None:
    assert _parse(PLAIN, value) == _reference_parse(PLAIN, value)


@pytest.mark.parametrize(
    ("message_type", "value"),
    [
        (BytesValue, "aGk="),
        (BytesValue, "aGk"),
        (BytesValue, 5),
        (BoolValue, True),
        (BoolValue, "true"),
        (Int64Value, 7),
        (Int64Value, "7"),
        (FloatValue, 1.5),
        (_cls("Mapped"), {"scores": {"a": 1}}),
        (_cls("Timed"), {"at": "2026-12-03T10:00:00Z"}),
        (_cls("Floaty"), {"level": 0.1}),
        (_cls("Tree"), {"children": [{"children": []}]}),
    ],
)
def test_wrappers_and_other_types_parse_as_json_format_does(
    message_type: type[Message], value: Any
) -> None:
    assert _parse(message_type, value) == _reference_parse(message_type, value)


def test_only_plain_types_have_plans() -> None:
    plain = PlainJson()
    assert plain.plan_of(PLAIN.DESCRIPTOR) is not None
    assert plain.plan_of(BytesValue.DESCRIPTOR) is not None
    for name in ("Mapped", "Timed", "Floaty", "Tree"):
        assert plain.plan_of(_cls(name).DESCRIPTOR) is None, name
    assert plain.plan_of(FloatValue.DESCRIPTOR) is None


def _random_message(rng: random.Random) -> Message:
    """A Plain with random fields set, through json_format (so it is a valid message)."""
    while True:
        value = {rng.choice(_keys()): rng.choice(_values(rng)) for _ in range(rng.randint(0, 6))}
        parsed = _reference_parse(PLAIN, value)
        if isinstance(parsed, bytes):
            return PLAIN.FromString(parsed)


def _reference_dump(message: Message) -> str:
    printed = json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    return json.dumps(printed)


def test_dumps_as_json_format_does_keys_in_the_same_order() -> None:
    rng = random.Random(3)
    messages = [_random_message(rng) for _ in range(500)]
    inf = PLAIN(ratio_one=float("inf"), ratio_many=[float("-inf"), float("nan"), 0.5])
    messages += [PLAIN(), inf, PLAIN(color=9, colors=[1, 12])]  # open enum: unknown numbers
    for message in messages:
        assert json.dumps(DESCRIPTIONS.to_dict(message)) == _reference_dump(message)
        assert DESCRIPTIONS._plain.dump(message) is not NOT_PLAIN


@pytest.mark.parametrize(
    "message",
    [
        BytesValue(value=b"\x00\xff hi"),
        BoolValue(),
        Int64Value(value=-(2**63)),
        FloatValue(value=0.1),
        _cls("Floaty")(level=0.1),
        _cls("Mapped")(scores={"a": 1}),
        _cls("Tree")(children=[_cls("Tree")()]),
    ],
)
def test_wrappers_and_other_types_dump_as_json_format_does(message: Message) -> None:
    assert json.dumps(DESCRIPTIONS.to_dict(message)) == _reference_dump(message)


@pytest.mark.parametrize(
    "body", ['{"color": Infinity}', '{"color": "\\ud800"}', '{"colors": [-Infinity]}']
)
def test_bad_input_json_format_lets_through_is_invalid_argument(body: str) -> None:
    """json_format raises OverflowError and SystemError for these; a call answers
    INVALID_ARGUMENT, as for any other value of the wrong type."""
    with pytest.raises(InvalidArgument, match=r"not a valid plaintest\.Plain"):
        DESCRIPTIONS.from_json(PLAIN, body)


@pytest.mark.parametrize(
    "value",
    [
        {"a": {"@type": 5}},  # json_format: AttributeError
        {"a": {"@type": "type.googleapis.com/google.protobuf.Duration"}},  # KeyError "value"
        {"a": {"@type": "type.googleapis.com/google.protobuf.Int64Value"}},
    ],
)
def test_an_any_json_format_fails_on_is_invalid_argument(value: dict[str, Any]) -> None:
    """Not plain: json_format converts it, and the errors it lets through of such an Any
    are INVALID_ARGUMENT as any other."""
    with pytest.raises(InvalidArgument, match=r"not a valid plaintest\.Packed"):
        DESCRIPTIONS.from_dict(_cls("Packed"), value)
