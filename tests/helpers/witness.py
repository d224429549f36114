"""The one-activation invariant: what Witness objects recorded, checked against the nodes' lives.

:class:`tests.helpers.objects.Witness` objects append a line per activation, deactivation and
call to ``witness-<pid>.jsonl``. A node process's log says when each of its incarnations joined
the cluster (``joined the cluster``) and when it fenced itself (``fenced: …``): a
:class:`NodeLife`. :func:`check` merges both and finds every way a node may have held an object
it should not have:

- **overlap**: an object was *held* by two incarnations at overlapping times. A node holds an
  object from its activation to its deactivation or, when it never deactivated it (killed,
  frozen, fenced), to the last call it served for it;
- **double activation**: an incarnation activated an object it held already;
- **call without activation**: an incarnation served a call on an object it had not activated;
- **served while fenced**: a record after the node fenced itself and before it joined again;
- **served before joining**: a record before the process's first incarnation joined;
- **unknown process**: a record of a pid no life was given for.

Holds are compared on ``mono_ns`` (``CLOCK_MONOTONIC``, one clock for every process of the
machine); records are placed in a life on ``wall``, the clock of the log lines.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.helpers.faults import logged_at

EVENTS = ("activate", "call", "deactivate")
JOINED = "joined the cluster"
FENCED = "fenced"
"""The start of the node's log event when it fences itself."""


@dataclass(frozen=True)
class Record:
    """One line a Witness wrote."""

    event: str
    object_id: str
    pid: int
    wall: float
    mono_ns: int


def read_records(directory: Path) -> list[Record]:
    """Every record in `directory` (all ``witness-*.jsonl`` files), in no particular order."""
    records = []
    for path in sorted(directory.glob("witness-*.jsonl")):
        for raw in path.read_text().splitlines():
            if raw.strip():
                fields = json.loads(raw)
                records.append(
                    Record(
                        fields["event"],
                        fields["object_id"],
                        fields["pid"],
                        fields["wall"],
                        fields["mono_ns"],
                    )
                )
    return records


@dataclass
class NodeLife:
    """One node process: its pid, a name for messages, and the wall-clock times at which each
    incarnation joined (with its id) and at which it fenced itself."""

    pid: int
    name: str
    joins: list[tuple[float, str]] = field(default_factory=list)
    fences: list[float] = field(default_factory=list)

    @classmethod
    def from_log(cls, pid: int, name: str, lines: Iterable[dict[str, Any]]) -> NodeLife:
        """The life told by the JSON log `lines` of this one process run."""
        life = cls(pid, name)
        for line in lines:
            event = str(line.get("event", ""))
            if event == JOINED:
                life.joins.append((logged_at(line), str(line.get("incarnation", ""))))
            elif event.startswith(FENCED):
                life.fences.append(logged_at(line))
        life.joins.sort()
        life.fences.sort()
        return life

    def incarnation_at(self, wall: float) -> str | None:
        """The incarnation that had joined last at `wall`; None before the first join."""
        index = bisect.bisect_right(self.joins, (wall, "\uffff"))
        return self.joins[index - 1][1] if index else None

    def fenced_at(self, wall: float) -> float | None:
        """When the process fenced itself, if it was fenced at `wall` (it fenced before and
        has not joined since); None otherwise."""
        fences = [fence for fence in self.fences if fence <= wall]
        if not fences:
            return None
        last_join = max((joined for joined, _ in self.joins if joined <= wall), default=None)
        return fences[-1] if last_join is None or last_join < fences[-1] else None


@dataclass(frozen=True)
class Holder:
    """One incarnation of one node process."""

    name: str
    pid: int
    incarnation: str

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid}, incarnation {self.incarnation})"


@dataclass(frozen=True)
class Hold:
    """An interval during which `holder` held `object_id` (``mono_ns`` bounds, inclusive)."""

    object_id: str
    holder: Holder
    start_ns: int
    end_ns: int
    deactivated: bool
    """Whether it ended with a deactivation (else at its last served call)."""


@dataclass(frozen=True)
class Violation:
    kind: str
    object_id: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.object_id}: {self.detail}"


@dataclass
class Verdict:
    """What :func:`check` found: the holds it built and every violation."""

    holds: list[Hold]
    violations: list[Violation]

    @property
    def objects(self) -> int:
        return len({hold.object_id for hold in self.holds})

    @property
    def moved(self) -> int:
        """Objects held by more than one incarnation over the run."""
        holders: dict[str, set[Holder]] = defaultdict(set)
        for hold in self.holds:
            holders[hold.object_id].add(hold.holder)
        return sum(1 for found in holders.values() if len(found) > 1)

    def handoff_gaps(self) -> list[float]:
        """For each time an object changed holder: seconds from the end of the old hold to the
        start of the new one (how long nobody held it; negative for an overlap)."""
        by_object: dict[str, list[Hold]] = defaultdict(list)
        for hold in self.holds:
            by_object[hold.object_id].append(hold)
        gaps = []
        for found in by_object.values():
            found.sort(key=lambda hold: hold.start_ns)
            for before, after in itertools.pairwise(found):
                if before.holder != after.holder:
                    gaps.append((after.start_ns - before.end_ns) / 1e9)
        return gaps

    def summary(self) -> str:
        return (
            f"{self.objects} objects, {len(self.holds)} holds, {self.moved} moved, "
            f"{len(self.violations)} violations"
        )

    def assert_holds(self) -> None:
        """Fails the test listing (up to 20 of) the violations."""
        if self.violations:
            shown = "\n".join(str(violation) for violation in self.violations[:20])
            raise AssertionError(
                f"the one-activation invariant does not hold ({self.summary()}):\n{shown}"
            )


def check(records: Iterable[Record], lives: Iterable[NodeLife]) -> Verdict:
    """Checks the records of every node against their lives (see the module docstring)."""
    by_pid = {life.pid: life for life in lives}
    violations: list[Violation] = []
    by_object: dict[tuple[str, Holder], list[Record]] = defaultdict(list)
    for record in records:
        if record.event not in EVENTS:
            raise ValueError(f"unknown witness event {record.event!r}")
        life = by_pid.get(record.pid)
        if life is None:
            violations.append(
                Violation(
                    "unknown process", record.object_id, f"{record.event} by pid {record.pid}"
                )
            )
            continue
        incarnation = life.incarnation_at(record.wall)
        if incarnation is None:
            violations.append(
                Violation(
                    "served before joining",
                    record.object_id,
                    f"{record.event} by {life.name} (pid {life.pid}) at {record.wall:.6f}",
                )
            )
            continue
        fenced = life.fenced_at(record.wall)
        if fenced is not None and record.event != "deactivate":
            violations.append(
                Violation(
                    "served while fenced",
                    record.object_id,
                    f"{record.event} by {life.name} (pid {life.pid}) "
                    f"{record.wall - fenced:.3f}s after it fenced itself",
                )
            )
        holder = Holder(life.name, life.pid, incarnation)
        by_object[record.object_id, holder].append(record)
    holds: list[Hold] = []
    for (object_id, holder), found in by_object.items():
        made, wrong = _holds(object_id, holder, sorted(found, key=lambda r: r.mono_ns))
        holds.extend(made)
        violations.extend(wrong)
    violations.extend(_overlaps(holds))
    return Verdict(holds, violations)


def _holds(
    object_id: str, holder: Holder, records: list[Record]
) -> tuple[list[Hold], list[Violation]]:
    """The holds of one object by one incarnation, from its records in time order."""
    holds: list[Hold] = []
    violations: list[Violation] = []
    start: int | None = None
    last = 0
    for record in records:
        if record.event == "activate":
            if start is not None:
                violations.append(
                    Violation("double activation", object_id, f"activated twice by {holder}")
                )
                holds.append(Hold(object_id, holder, start, last, deactivated=False))
            start = last = record.mono_ns
        elif start is None:
            violations.append(
                Violation(
                    "call without activation" if record.event == "call" else "double deactivation",
                    object_id,
                    f"{record.event} by {holder} at {record.wall:.6f} with no activation before",
                )
            )
        elif record.event == "call":
            last = record.mono_ns
        else:
            holds.append(Hold(object_id, holder, start, record.mono_ns, deactivated=True))
            start = None
    if start is not None:
        holds.append(Hold(object_id, holder, start, last, deactivated=False))
    return holds, violations


def _overlaps(holds: list[Hold]) -> list[Violation]:
    """Holds of one object by two incarnations that overlap in time."""
    by_object: dict[str, list[Hold]] = defaultdict(list)
    for hold in holds:
        by_object[hold.object_id].append(hold)
    violations = []
    for object_id, found in by_object.items():
        found.sort(key=lambda hold: (hold.start_ns, hold.end_ns))
        reaching = found[0]  # the hold reaching furthest so far
        for hold in found[1:]:
            if hold.start_ns <= reaching.end_ns and hold.holder != reaching.holder:
                violations.append(
                    Violation(
                        "overlap",
                        object_id,
                        f"held by {reaching.holder} until +{_ms(reaching.end_ns, hold.start_ns)} "
                        f"after {hold.holder} activated it",
                    )
                )
            if hold.end_ns > reaching.end_ns:
                reaching = hold
    return violations


def _ms(later: int, earlier: int) -> str:
    return f"{(later - earlier) / 1e6:.3f}ms"


__all__ = [
    "Hold",
    "Holder",
    "NodeLife",
    "Record",
    "Verdict",
    "Violation",
    "check",
    "read_records",
]
