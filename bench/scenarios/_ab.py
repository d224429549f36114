"""Scenario 10, A/B: the work tree's services against another checkout's, calls alternated.

This machine's speed drifts by tens of per cent within minutes, and ``--compare-code`` runs
each scenario of one side after the other's, so a change worth 5-10 % of CPU per call reads
anywhere from -20 % to +20 % there. Here both systems run at once and short rounds of the
same closed-loop calls alternate between them (which side goes first alternates too), so a
drift falls on both sides alike; the rows are medians over the rounds. Calls go through the
SDK's session stream and, at the same concurrency, through the gate's HTTP interface.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

from google.protobuf.wrappers_pb2 import BytesValue

from bench.clients import CALL_TIMEOUT, LoadResult, closed_loop
from bench.cluster import System, Variant, start_system
from bench.cpu import HARNESS, CpuMeter
from bench.results_model import ScenarioResult
from bench.scenarios._context import Ctx, result_key, title_suffix
from bench.scenarios._http import HTTP_LISTEN, echo_body, http_session, post_call
from bench.stats import median
from goverse.client import Client

Call = Callable[[int], Awaitable[None]]


@dataclass
class Side:
    """One system under comparison: how to call it on each path, and its rounds' figures."""

    system: System
    calls: dict[str, Call] = field(default_factory=dict)
    rounds: dict[str, list[LoadResult]] = field(default_factory=dict)

    def pids(self) -> dict[str, int]:
        return {"gate": self.system.gate.pid, "node": self.system.node.pid}


def _urls(system: System, count: int) -> list[str]:
    assert system.gate.ready is not None
    address = system.gate.ready.identity["http"]
    return [f"http://{address}/v1/objects/Echo/echo-{index}/Echo" for index in range(count)]


async def _round(ctx: Ctx, side: Side, path: str, level: int) -> None:
    s = ctx.settings
    result = await closed_loop(
        side.calls[path],
        level,
        warmup=s.ab_round_warmup,
        duration=s.ab_round_seconds,
        cpu=CpuMeter(side.pids()),
    )
    side.rounds.setdefault(path, []).append(result)


def _per_call(results: list[LoadResult], process: str | None) -> float:
    """Median over the rounds of a process's CPU per call in ms (None: gate and node)."""
    values = []
    for result in results:
        assert result.cpu is not None
        per_call = result.cpu.per_call_ms(result.completed)
        if not per_call:
            continue
        if process is None:
            values.append(sum(ms for name, ms in per_call.items() if name != HARNESS))
        else:
            values.append(per_call[process])
    return median(values) if values else float("nan")


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


async def ab(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    if not s.compare_code:
        raise ValueError("scenario 10 compares the work tree with --compare-code DIR")
    base_variant = Variant("code", variant.loop, code=s.compare_code, tls=variant.tls)
    result = ScenarioResult(
        result_key("ab", variant),
        "10. A/B: work tree vs another checkout, alternated rounds" + title_suffix(variant),
        a_label="checkout",
        b_label="work tree",
        params={
            "concurrency": list(s.concurrency),
            "payload_bytes": s.payload,
            "loop": variant.loop,
            "checkout": s.compare_code,
            "rounds": s.ab_rounds,
            "round_warmup_s": s.ab_round_warmup,
            "round_s": s.ab_round_seconds,
            "paths": "sdk: goverse.client.Client.call (session stream); http: POST through "
            "the gate's HTTP interface, one keep-alive connection per worker",
        },
    )
    payload = b"x" * s.payload
    body = echo_body(s.payload)
    async with ctx.scope():
        sides = [
            Side(await start_system(ctx.procs, base_variant, gate_flags=[HTTP_LISTEN])),
            Side(await start_system(ctx.procs, variant, gate_flags=[HTTP_LISTEN])),
        ]
        ids = [f"echo-{index}" for index in range(max(s.concurrency))]
        for level in s.concurrency:
            async with (
                Client([sides[0].system.gate_address], call_timeout=_timeout()) as base_client,
                Client([sides[1].system.gate_address], call_timeout=_timeout()) as new_client,
                http_session(level) as base_http,
                http_session(level) as new_http,
            ):
                for side, client, http in (
                    (sides[0], base_client, base_http),
                    (sides[1], new_client, new_http),
                ):
                    side.rounds = {}
                    side.calls = {
                        "sdk": sdk_call(client, ids, payload),
                        "http": post_call(http, _urls(side.system, level), body),
                    }
                    for path in side.calls:  # activation and connecting are not measured
                        for worker in range(level):
                            await side.calls[path](worker)
                for path in ("sdk", "http"):
                    await alternate(ctx, sides, path, level)
                    case = f"{path}, concurrency {level}"
                    rows(result, case, sides[0].rounds[path], sides[1].rounds[path])
                    result.details[case] = round_details(
                        {"checkout": sides[0], "work tree": sides[1]}, path
                    )
    return result


def _timeout() -> timedelta:
    return timedelta(seconds=CALL_TIMEOUT)


def sdk_call(client: Client, ids: list[str], payload: bytes) -> Call:
    """A closed-loop call: worker `n` calls ``Echo`` ``ids[n]`` through the SDK."""

    async def call(worker: int) -> None:
        await client.call("Echo", ids[worker], "Echo", BytesValue(value=payload), BytesValue)

    return call


__all__ = ["Side", "ab", "alternate", "round_details", "rows", "sdk_call"]
