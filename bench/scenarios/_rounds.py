"""Alternated rounds: two sides (systems, or a system and a bare server) both running, short
rounds of the same closed-loop calls taking turns between them.

This machine's speed drifts by tens of per cent within minutes, so figures of one side taken
after the other's differ by more than most changes do. Rounds that alternate (which side goes
first alternates too) put a drift on both sides alike; the rows are medians over the rounds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.clients import LoadResult, closed_loop
from bench.cluster import System
from bench.cpu import HARNESS, CpuMeter
from bench.results_model import ScenarioResult
from bench.scenarios._context import Ctx
from bench.stats import median

Call = Callable[[int], Awaitable[None]]

ALTERNATED = "alternated rounds"
"""The end of the name of every case measured in alternated rounds (what the call targets
read: one after the other, the sides' figures drift with the machine)."""


@dataclass
class Side:
    """One side under comparison (a system, or a bare server): the processes whose CPU its
    rounds measure, how to call it on each path, and its rounds' figures."""

    pids: dict[str, int]
    calls: dict[str, Call] = field(default_factory=dict)
    rounds: dict[str, list[LoadResult]] = field(default_factory=dict)

    @classmethod
    def of(cls, system: System, calls: dict[str, Call] | None = None) -> Side:
        """The side of `system`: its gate's and node's CPU measured."""
        return cls({"gate": system.gate.pid, "node": system.node.pid}, calls or {})


async def _round(ctx: Ctx, side: Side, path: str, level: int) -> None:
    s = ctx.settings
    result = await closed_loop(
        side.calls[path],
        level,
        warmup=s.ab_round_warmup,
        duration=s.ab_round_seconds,
        cpu=CpuMeter(side.pids),
    )
    side.rounds.setdefault(path, []).append(result)


def _per_call(results: list[LoadResult], process: str | None) -> float | None:
    """Median over the rounds of a process's CPU per call in ms (`process` None: every server
    process together); None when the side has no such process."""
    values = []
    for result in results:
        assert result.cpu is not None
        per_call = result.cpu.per_call_ms(result.completed)
        if process is None:
            values.append(sum(ms for name, ms in per_call.items() if name != HARNESS))
        elif process in per_call:
            values.append(per_call[process])
    return median(values) if values else None


async def alternate(ctx: Ctx, sides: list[Side], path: str, level: int) -> None:
    """`ctx`'s number of rounds of `path`'s calls at `level` on each side, the sides taking
    turns (which one goes first alternates too), so that a drift of the machine's speed falls
    on both alike."""
    for number in range(ctx.settings.ab_rounds):
        for side in sides if number % 2 == 0 else sides[::-1]:
            await _round(ctx, side, path, level)


def round_details(sides: dict[str, Side], path: str) -> dict[str, list[dict[str, object]]]:
    """Each side's rounds of `path` as the results' details record them."""
    return {
        label: [
            {
                "calls_per_s": round(r.calls_per_second, 1),
                "errors": r.errors,
                "cpu_ms_per_call": r.cpu.per_call_ms(r.completed) if r.cpu else {},
            }
            for r in side.rounds[path]
        ]
        for label, side in sides.items()
    }


def rows(result: ScenarioResult, case: str, base: list[LoadResult], new: list[LoadResult]) -> None:
    """Medians over the rounds: calls/s and CPU per call of each process, `new` against `base`."""
    rate = [r.calls_per_second for r in base], [r.calls_per_second for r in new]
    result.add(case, "calls/s (median of rounds)", "1/s", median(rate[0]), median(rate[1]))
    metrics = (("servers", None), ("gate", "gate"), ("node", "node"), ("client", HARNESS))
    for label, process in metrics:
        result.add(
            case,
            f"CPU per call, {label}",
            "ms",
            _per_call(base, process),
            _per_call(new, process),
            "lower",
        )


__all__ = ["ALTERNATED", "Call", "Side", "alternate", "round_details", "rows"]
