"""How an error travels on a call stream: CallStatus and back, as a unary call's status would."""

from __future__ import annotations

import grpc
import pytest

from goverse import errors, wire
from goverse.v1.calls_pb2 import CallStatus


@pytest.mark.parametrize(
    "error",
    [
        errors.InvalidArgument("bad id"),
        errors.NotFound("no type"),
        errors.Unavailable("node n is unavailable"),
        errors.DataLoss("state of Counter/c does not parse"),
        errors.CallError(grpc.StatusCode.DEADLINE_EXCEEDED, "late"),
    ],
)
def test_a_status_carries_the_code_and_message(error: errors.GoverseError) -> None:
    back = errors.status_error(errors.call_status(error))
    assert (back.status_code, back.message, back.refusal) == (
        error.status_code,
        error.message,
        None,
    )
    assert back.trailing_metadata == ()


def test_a_shard_refusal_survives_the_round_trip() -> None:
    refused = errors.ShardNotServed(7, wire.ShardRefusal.MOVING, "shard 7 is moving")
    status = errors.call_status(refused)
    assert status.shard_refusal == "moving"
    back = errors.status_error(status)
    assert back.status_code is grpc.StatusCode.FAILED_PRECONDITION
    assert back.refusal is wire.ShardRefusal.MOVING
    assert errors.error_refusal(back) is wire.ShardRefusal.MOVING
    assert wire.shard_refusal_of(back.trailing_metadata) is wire.ShardRefusal.MOVING


@pytest.mark.parametrize("code", [0, 17, 9999])
def test_a_code_grpc_does_not_know_or_ok_reads_as_unknown(code: int) -> None:
    back = errors.status_error(CallStatus(code=code, message=""))
    assert back.status_code is grpc.StatusCode.UNKNOWN
    assert back.message == "UNKNOWN"


def test_an_unknown_refusal_is_not_retryable() -> None:
    back = errors.status_error(CallStatus(code=9, message="m", shard_refusal="elsewhere"))
    assert back.refusal is None
    assert back.status_code is grpc.StatusCode.FAILED_PRECONDITION


def test_a_message_echoing_huge_input_is_cut_to_the_bound() -> None:
    """An error or stream status whose message echoes 1 MB of input carries at most
    MAX_MESSAGE_CHARS characters, its start kept and its length said; a short one is intact."""
    huge = "unknown type " + "x" * 1024 * 1024
    for message in (
        errors.NotFound(huge).message,
        errors.code_status(grpc.StatusCode.NOT_FOUND, huge).message,
    ):
        assert len(message) == errors.MAX_MESSAGE_CHARS
        assert message.startswith("unknown type xxx")
        assert message.endswith(f"({len(huge)} characters, truncated)")
    assert errors.InvalidArgument("bad id").message == "bad id"
