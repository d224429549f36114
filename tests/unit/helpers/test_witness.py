"""The one-activation checker fails on every way a node can hold an object it should not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf.empty_pb2 import Empty
from google.protobuf.wrappers_pb2 import Int64Value

from goverse.testing import ObjectEnvironment
from tests.helpers.objects import WITNESS_DIR, Witness
from tests.helpers.witness import NodeLife, Record, Verdict, check, read_records

A, B = 101, 202
"""The pids of two node processes."""


def lives() -> list[NodeLife]:
    """Node A joined at t=0 (incarnation a1), node B at t=0 (b1)."""
    return [NodeLife(A, "node-a", joins=[(0.0, "a1")]), NodeLife(B, "node-b", joins=[(0.0, "b1")])]


def record(event: str, pid: int, at: float, object_id: str = "w-1") -> Record:
    """A record at `at` seconds on both clocks."""
    return Record(event, object_id, pid, at, int(at * 1e9))


def kinds(verdict: Verdict) -> list[str]:
    return [violation.kind for violation in verdict.violations]


def test_a_handoff_that_deactivates_before_the_next_activation_holds() -> None:
    """A activates, serves and deactivates the object; then B activates and serves it: two
    holds, one after the other, no violation."""
    verdict = check(
        [
            record("activate", A, 1.0),
            record("call", A, 1.1),
            record("deactivate", A, 2.0),
            record("activate", B, 2.1),
            record("call", B, 2.2),
        ],
        lives(),
    )
    assert verdict.violations == []
    assert (verdict.objects, len(verdict.holds), verdict.moved) == (1, 2, 1)
    verdict.assert_holds()


def test_an_activation_while_another_node_holds_the_object_is_an_overlap() -> None:
    """B activates the object while A, which activated it before, has not deactivated it and
    serves a call after: the checker reports the overlap and assert_holds fails."""
    verdict = check(
        [
            record("activate", A, 1.0),
            record("activate", B, 1.5),
            record("call", A, 1.6),
            record("deactivate", A, 2.0),
        ],
        lives(),
    )
    assert kinds(verdict) == ["overlap"]
    assert "node-a (pid 101, incarnation a1)" in str(verdict.violations[0])
    with pytest.raises(AssertionError, match="overlap: w-1"):
        verdict.assert_holds()


def test_a_killed_node_holds_its_objects_until_its_last_served_call() -> None:
    """A never deactivates (it was killed): it held the object until its last call. B
    activating after that call is fine; B activating before it is an overlap."""
    after = [record("activate", A, 1.0), record("call", A, 3.0), record("activate", B, 3.5)]
    assert check(after, lives()).violations == []
    before = [record("activate", A, 1.0), record("call", A, 3.0), record("activate", B, 2.5)]
    assert kinds(check(before, lives())) == ["overlap"]


def test_a_call_after_the_node_fenced_itself_is_reported_until_it_joins_again() -> None:
    """A fences itself at t=5 and joins again at t=8 as incarnation a2: a call at t=6 was
    served while fenced; calls after t=8 are a2's and fine."""
    fenced = NodeLife(A, "node-a", joins=[(0.0, "a1"), (8.0, "a2")], fences=[5.0])
    verdict = check(
        [
            record("activate", A, 1.0),
            record("call", A, 6.0),
            record("activate", A, 9.0, "w-2"),
            record("call", A, 9.5, "w-2"),
        ],
        [fenced],
    )
    assert kinds(verdict) == ["served while fenced"]
    assert "1.000s after it fenced itself" in verdict.violations[0].detail


def test_two_incarnations_of_one_process_are_two_holders() -> None:
    """A's first incarnation held the object until a call at t=6; its second incarnation
    (joined at t=5, without a fence logged) activates it at t=5.5: an overlap within one pid."""
    rejoined = NodeLife(A, "node-a", joins=[(0.0, "a1"), (5.0, "a2")])
    verdict = check(
        [record("activate", A, 1.0), record("call", A, 4.0), record("activate", A, 5.5)],
        [rejoined],
    )
    assert verdict.violations == []
    assert {hold.holder.incarnation for hold in verdict.holds} == {"a1", "a2"}


def test_double_activations_calls_without_activation_and_strangers_are_reported() -> None:
    """An incarnation activating an object twice, serving one it never activated, a record
    before the first join and a record of an unknown pid are each a violation."""
    late = NodeLife(B, "node-b", joins=[(10.0, "b1")])
    verdict = check(
        [
            record("activate", A, 1.0),
            record("activate", A, 2.0),
            record("call", A, 3.0, "w-2"),
            record("call", B, 4.0, "w-3"),
            record("call", 303, 5.0, "w-4"),
        ],
        [lives()[0], late],
    )
    assert sorted(kinds(verdict)) == [
        "call without activation",
        "double activation",
        "served before joining",
        "unknown process",
    ]


def test_node_life_reads_joins_and_fences_from_the_log() -> None:
    """The life of a process is read from its JSON log lines: each join with its incarnation,
    each fence; other lines are ignored."""
    lines = [
        {"event": "listening", "timestamp": "2026-01-01T00:00:00.000000Z"},
        {
            "event": "joined the cluster",
            "incarnation": "7a",
            "timestamp": "2026-01-01T00:00:01.000000Z",
        },
        {"event": "fenced: the lease could not be renewed", "timestamp": "2026-01-01T00:00:05Z"},
        {
            "event": "joined the cluster",
            "incarnation": "7b",
            "timestamp": "2026-01-01T00:00:06.500000Z",
        },
    ]
    life = NodeLife.from_log(A, "node-a", lines)
    start = 1767225600.0  # 2026-01-01T00:00:00Z
    assert [(round(at - start, 3), inc) for at, inc in life.joins] == [(1.0, "7a"), (6.5, "7b")]
    assert [round(at - start, 3) for at in life.fences] == [5.0]
    assert life.incarnation_at(start + 0.5) is None
    assert life.incarnation_at(start + 5.5) == "7a"
    assert life.fenced_at(start + 5.5) == life.fences[0]
    assert life.fenced_at(start + 7.0) is None


async def test_a_witness_records_what_read_records_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Witness hosted in process writes one line per activation, call and deactivation to
    its process's file, with times on both clocks in order."""
    monkeypatch.setenv(WITNESS_DIR, str(tmp_path))
    env = ObjectEnvironment()
    witness = env.create(Witness, "w-1")
    assert (await witness.call("Touch", Empty(), Int64Value)).value == os.getpid()
    assert (await witness.call("Hold", Int64Value(value=1), Int64Value)).value == os.getpid()
    assert await witness.deactivate()
    records = read_records(tmp_path)
    assert [(r.event, r.object_id, r.pid) for r in records] == [
        ("activate", "w-1", os.getpid()),
        ("call", "w-1", os.getpid()),
        ("call", "w-1", os.getpid()),
        ("deactivate", "w-1", os.getpid()),
    ]
    assert [r.mono_ns for r in records] == sorted(r.mono_ns for r in records)
    assert (tmp_path / f"witness-{os.getpid()}.jsonl").exists()
