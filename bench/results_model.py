"""What a run produces: rows of measurements per scenario, their ratios, and the targets."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Row:
    """One measured quantity, on side A (the baseline) and side B (what is compared to it)."""

    case: str
    metric: str
    unit: str
    a: float | None
    b: float | None
    better: str = "higher"
    """"higher" or "lower": which direction of the ratio b/a is good."""

    @property
    def ratio(self) -> float | None:
        if self.a is None or self.b is None or self.a == 0 or math.isnan(self.a):
            return None
        return self.b / self.a

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        return data


@dataclass
class ScenarioResult:
    key: str
    title: str
    a_label: str = "bare"
    b_label: str = "system"
    params: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    load_average: list[float] = field(default_factory=list)

    def add(
        self,
        case: str,
        metric: str,
        unit: str,
        a: float | None,
        b: float | None,
        better: str = "higher",
    ) -> None:
        self.rows.append(Row(case, metric, unit, a, b, better))

    def row(self, case: str, metric: str) -> Row | None:
        for row in self.rows:
            if row.case == case and row.metric == metric:
                return row
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "a_label": self.a_label,
            "b_label": self.b_label,
            "params": self.params,
            "rows": [row.to_json() for row in self.rows],
            "details": self.details,
            "notes": self.notes,
            "error": self.error,
            "seconds": round(self.seconds, 1),
            "load_average_after": self.load_average,
        }


@dataclass
class Target:
    name: str
    required: str
    measured: str
    met: bool | None
    """None when the scenario did not run or failed."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
