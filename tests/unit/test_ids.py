"""Identifiers: what is a valid object reference, gate id and client id."""

from __future__ import annotations

import pytest

from goverse.errors import InvalidArgument
from goverse.ids import (
    MAX_OBJECT_ID_BYTES,
    gate_id_problem,
    gate_of_client,
    new_client_id,
    validate_method,
    validate_object_ref,
)


@pytest.mark.parametrize(
    ("object_type", "object_id"),
    [
        ("", "x"),
        ("Counter", ""),
        ("Counter", "x" * (MAX_OBJECT_ID_BYTES + 1)),
        ("Counter", "bad\nid"),
        ("Counter", "lone\ud800surrogate"),  # regression: raised UnicodeEncodeError
        ("has/slash", "x"),
        ("1Leading", "x"),
        ("T" * 200, "x"),
    ],
)
def test_malformed_refs_are_invalid_argument(object_type: str, object_id: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_object_ref(object_type, object_id)


def test_wellformed_refs_pass() -> None:
    validate_object_ref("Counter", "apples")
    validate_object_ref("pkg.Type_2", "ünïcödé/and spaces")
    validate_method("Increment")


def test_client_ids_carry_their_gate() -> None:
    client_id = new_client_id("gate-0")
    assert gate_of_client(client_id) == "gate-0"
    assert new_client_id("gate-0") != client_id


@pytest.mark.parametrize("bad", ["", "noslash", "/x", "gate-0/", "bad gate/x"])
def test_malformed_client_ids_have_no_gate(bad: str) -> None:
    assert gate_of_client(bad) is None


def test_gate_id_rules() -> None:
    assert gate_id_problem("goverse-gate-7f9c.default") is None
    assert gate_id_problem("") is not None
    assert gate_id_problem("a/b") is not None
    assert gate_id_problem("x" * 64) is not None
