"""Wire contract: close reasons and shard refusals travel as trailing metadata and come back;
payloads are packed as ``Any.Pack`` packs them."""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2, wrappers_pb2
from google.protobuf.message import Message

from goverse import wire
from goverse.v1 import describe_pb2
from goverse.wire import CloseReason


@pytest.mark.parametrize("reason", list(CloseReason))
def test_a_close_reason_round_trips_through_trailing_metadata(reason: CloseReason) -> None:
    metadata = wire.close_metadata(reason)
    assert metadata == ((wire.CLOSE_REASON_KEY, reason.value),)
    assert wire.close_reason_of(metadata) is reason


def test_no_close_reason_is_no_metadata() -> None:
    assert wire.close_metadata(None) == ()
    assert wire.close_reason_of(()) is None


@pytest.mark.parametrize("refusal", list(wire.ShardRefusal))
def test_a_shard_refusal_round_trips_through_trailing_metadata(
    refusal: wire.ShardRefusal,
) -> None:
    metadata = wire.shard_metadata(refusal)
    assert metadata == (("goverse-shard", refusal.value),)
    assert wire.shard_refusal_of(metadata) is refusal


def test_a_call_without_or_with_an_unknown_shard_marker_is_not_a_refusal() -> None:
    """Only a refusal this process knows is one is safe to send again."""
    assert wire.shard_refusal_of(()) is None
    assert wire.shard_refusal_of(None) is None
    assert wire.shard_refusal_of((("goverse-shard", "frozen"),)) is None


@pytest.mark.parametrize(
    "message",
    [
        wrappers_pb2.BytesValue(value=b"\x00payload"),
        wrappers_pb2.StringValue(),  # nothing set: an empty value, the type still named
        describe_pb2.DescribeResponse(
            types=[describe_pb2.ObjectTypeDescription(name="Counter")],
        ),
    ],
)
def test_pack_makes_what_any_pack_makes_and_unpack_reads_it(message: Message) -> None:
    expected = any_pb2.Any()
    expected.Pack(message)

    packed = wire.pack(message)

    assert packed == expected
    assert packed.SerializeToString() == expected.SerializeToString()
    assert wire.unpack(packed, type(message)) == message
