"""GateChooser: random first choice, failed gates avoided for a while, reset when all failed."""

from __future__ import annotations

import collections
import random

import pytest

from goverse.client._gates import GateChooser


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_first_choice_is_spread_over_gates() -> None:
    picks = collections.Counter(
        GateChooser(["a", "b", "c"], 5, random.Random(seed)).choose() for seed in range(300)
    )
    assert set(picks) == {"a", "b", "c"}
    assert min(picks.values()) > 50


def test_failed_gate_is_avoided_until_quarantine_ends() -> None:
    clock = Clock()
    chooser = GateChooser(["a", "b"], 5, random.Random(1), clock)
    chooser.mark_failed("a")
    assert {chooser.choose() for _ in range(50)} == {"b"}
    clock.now = 6
    assert {chooser.choose() for _ in range(50)} == {"a", "b"}


def test_when_every_gate_failed_the_marks_are_forgotten() -> None:
    chooser = GateChooser(["a", "b"], 5, random.Random(1), Clock())
    chooser.mark_failed("a")
    chooser.mark_failed("b")
    assert chooser.choose() in {"a", "b"}
    assert {chooser.choose() for _ in range(50)} == {"a", "b"}


def test_one_string_is_refused_at_once() -> None:
    # Not read as one gate per character (that failed only when connect() gave up, saying
    # "no gate of 1, 2, 7, ., 0, ..." accepted a registration).
    with pytest.raises(TypeError, match=r"not one string: \['127.0.0.1:7100'\]"):
        GateChooser("127.0.0.1:7100", 5)


def test_no_gate_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="at least one gate"):
        GateChooser([], 5)
