"""The call chain a node reads from a unary call's metadata: what a node sent, or nothing."""

from __future__ import annotations

import pytest

from goverse import wire
from goverse.node._call_context import chain_from_metadata, chain_metadata


def test_a_chain_sent_is_the_chain_read() -> None:
    chain = (("Room", "r1"), ("Counter", "c1"))
    assert chain_from_metadata(chain_metadata(chain)) == chain
    assert chain_from_metadata(None) == ()


@pytest.mark.parametrize(
    "value",
    [b"not json", b'{"a": 1}', b'[["Room"]]', b"[" * 100_000 + b"]" * 100_000, b"\xff"],
)
def test_a_malformed_chain_is_no_chain(value: bytes) -> None:
    """Anything but a list of [type, id] pairs, nesting past the stack included, reads as no
    chain (the call is then a chain's first), never as an error of the node."""
    assert chain_from_metadata([(wire.CALL_CHAIN_KEY, value)]) == ()
