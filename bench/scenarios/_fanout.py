"""Scenario 3, fan-out: one broadcast to many clients vs a bare server writing to many streams."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench import wire
from bench.clients import CALL_TIMEOUT, BareStubs, StreamSet, bare_hold, gate_register
from bench.cluster import Variant, start_bare, start_system
from bench.cpu import CpuMeter
from bench.results_model import ScenarioResult
from bench.scenarios._calls import cpu_per_unit_rows
from bench.scenarios._context import Ctx, channels, result_key, title_suffix
from bench.stats import latency_ms, median
from goverse.v1 import gate_pb2, gate_pb2_grpc
from goverse.wire import CLIENT_ID_KEY, CREDENTIAL_KEY, pack

ROUND_TIMEOUT = 30.0


async def _round(
    streams: StreamSet, trigger: Callable[[int], Awaitable[None]], seq: int
) -> dict[str, Any] | None:
    """One broadcast to every stream of `streams`: what arrived, or None when nothing did."""
    arrivals = streams.expect(seq)
    triggered = time.monotonic_ns()
    await trigger(seq)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ROUND_TIMEOUT):
            await arrivals.done.wait()
    del streams.rounds[seq]
    received = arrivals.received_ns
    if not received:
        return None
    last = max(received)
    return {
        "received": len(received),
        "expected": arrivals.expected,
        "time_to_last_ms": (last - arrivals.sent_ns) / 1e6,
        "time_to_last_from_call_ms": (last - triggered) / 1e6,
        "latency_p50_ms": latency_ms([t - arrivals.sent_ns for t in received])["p50"],
        "deliveries_per_s": len(received) / ((last - arrivals.sent_ns) / 1e9),
    }


@dataclass
class Side:
    """One side of the comparison: its streams, what starts a round, the servers to meter."""

    streams: StreamSet
    trigger: Callable[[int], Awaitable[None]]
    servers: dict[str, int]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds used during the measured rounds, by process (:data:`HARNESS`: the bench)."""

    async def measure(self, seq: int, *, warm_up: bool) -> None:
        meter = CpuMeter(self.servers)
        meter.start()
        outcome = await _round(self.streams, self.trigger, seq)
        meter.stop()
        if not warm_up and outcome is not None:
            self.rounds.append(outcome)
            for name, used in meter.used.items():
                self.cpu[name] = self.cpu.get(name, 0.0) + used

    def cpu_per_delivery_ms(self) -> dict[str, float]:
        delivered = sum(r["received"] for r in self.rounds)
        return (
            {name: 1000 * used / delivered for name, used in self.cpu.items()} if delivered else {}
        )


async def _alternated_rounds(bare: Side, system: Side, rounds: int) -> None:
    """`rounds` rounds of each side, alternated (which side goes first alternates too), after
    one warm-up round of each: both sides see the same machine, whatever drifts during the
    run (the halves of a run measured minutes apart moved by tens of per cent)."""
    for index in range(rounds + 1):  # round 0 warms up
        order = (bare, system) if index % 2 else (system, bare)
        for side in order:
            seq = 1_000_000 + 2 * index + (side is system)
            await side.measure(seq, warm_up=index == 0)
            await asyncio.sleep(0.1)


def _fanout_summary(rounds: list[dict[str, Any]]) -> dict[str, float]:
    def med(key: str) -> float:
        return median([r[key] for r in rounds])

    return {
        "time_to_last_ms": med("time_to_last_ms"),
        "time_to_last_from_call_ms": med("time_to_last_from_call_ms"),
        "latency_p50_ms": med("latency_p50_ms"),
        "deliveries_per_s": med("deliveries_per_s"),
        "complete_rounds": sum(1 for r in rounds if r["received"] == r["expected"]),
    }


def _metadata(registered: gate_pb2.Registered) -> tuple[tuple[str, str], ...]:
    return ((CLIENT_ID_KEY, registered.client_id), (CREDENTIAL_KEY, registered.credential))


async def fanout(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    n = s.fanout_clients
    result = ScenarioResult(
        result_key("fanout", variant),
        f"3. Fan-out: one broadcast to {n} connected clients" + title_suffix(variant),
        params={
            "clients": n,
            "rounds": s.fanout_rounds,
            "payload_bytes": s.payload,
            "streams_per_connection": s.streams_per_channel,
            "clients_are": "raw GateService.Register streams read by one task each "
            "(not SDK clients), all in the bench process",
            "bare": "Hold streams; Fanout queues one message for each",
            "system": "Broadcaster.Broadcast -> self.broadcast()",
            "figures": "median over rounds; time from the sender's stamp to the last arrival",
            "rounds_are": "bare and system rounds alternated, both sides' streams held at once",
        },
    )
    async with ctx.scope(), contextlib.AsyncExitStack() as held:
        proc = await start_bare(ctx.procs, variant)
        bare_streams = StreamSet(channels(proc.address, n, s.streams_per_channel), bare_hold)
        held.push_async_callback(bare_streams.close)
        bare_register = await bare_streams.open(n, s.register_parallel)
        stubs = BareStubs(bare_streams.channels[0])

        async def bare_trigger(seq: int) -> None:
            await stubs.fanout(wire.params(seq=seq, payload=s.payload), timeout=CALL_TIMEOUT)

        system = await start_system(ctx.procs, variant)
        streams = StreamSet(channels(system.gate_address, n, s.streams_per_channel), gate_register)
        held.push_async_callback(streams.close)
        system_register = await streams.open(n, s.register_parallel)
        stub = gate_pb2_grpc.GateServiceStub(streams.channels[0])
        metadata = _metadata(streams.registered[0])

        async def system_trigger(seq: int) -> None:
            request = gate_pb2.CallObjectRequest(
                object_type="Broadcaster",
                object_id="broadcaster",
                method="Broadcast",
                request=pack(wire.params(seq=seq, payload=s.payload)),
            )
            await stub.CallObject(request, metadata=metadata, timeout=CALL_TIMEOUT)

        bare = Side(bare_streams, bare_trigger, {"bare": proc.pid})
        goverse = Side(streams, system_trigger, {"gate": system.gate.pid, "node": system.node.pid})
        await _alternated_rounds(bare, goverse, s.fanout_rounds)
    a, b = _fanout_summary(bare.rounds), _fanout_summary(goverse.rounds)
    case = f"{n} clients"
    result.add(case, "deliveries/s", "1/s", a["deliveries_per_s"], b["deliveries_per_s"])
    result.add(
        case, "time to last client", "ms", a["time_to_last_ms"], b["time_to_last_ms"], "lower"
    )
    result.add(case, "latency p50", "ms", a["latency_p50_ms"], b["latency_p50_ms"], "lower")
    result.add(
        case,
        "time to last, from the call",
        "ms",
        a["time_to_last_from_call_ms"],
        b["time_to_last_from_call_ms"],
        "lower",
    )
    if (cpu_a := bare.cpu_per_delivery_ms()) and (cpu_b := goverse.cpu_per_delivery_ms()):
        cpu_per_unit_rows(result, case, "delivery", cpu_a, cpu_b)
    result.details = {
        "bare": {"register_s": bare_register, **a, "rounds": bare.rounds},
        "system": {"register_s": system_register, **b, "rounds": goverse.rounds},
    }
    for side, summary in (("bare", a), ("system", b)):
        if summary["complete_rounds"] != s.fanout_rounds:
            result.notes.append(
                f"INCOMPLETE: {side}: {summary['complete_rounds']} of {s.fanout_rounds} rounds "
                "reached every client"
            )
    return result
