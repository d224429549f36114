"""Scenario 3, fan-out: one broadcast to many clients vs a bare server writing to many streams."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench import wire
from bench.clients import CALL_TIMEOUT, BareStubs, StreamSet, bare_hold, gate_register
from bench.cluster import Variant, start_bare, start_system
from bench.results_model import ScenarioResult
from bench.scenarios._context import Ctx, channels, result_key, title_suffix
from bench.stats import latency_ms, median
from goverse.v1 import gate_pb2, gate_pb2_grpc
from goverse.wire import CLIENT_ID_KEY, CREDENTIAL_KEY, pack

ROUND_TIMEOUT = 30.0


async def _rounds(
    streams: StreamSet, trigger: Callable[[int], Awaitable[None]], rounds: int, payload: int
) -> list[dict[str, Any]]:
    measured: list[dict[str, Any]] = []
    for index in range(rounds + 1):  # round 0 warms up
        seq = 1_000_000 + index
        arrivals = streams.expect(seq)
        triggered = time.monotonic_ns()
        await trigger(seq)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ROUND_TIMEOUT):
                await arrivals.done.wait()
        received = arrivals.received_ns
        if index and received:
            last = max(received)
            measured.append(
                {
                    "received": len(received),
                    "expected": arrivals.expected,
                    "time_to_last_ms": (last - arrivals.sent_ns) / 1e6,
                    "time_to_last_from_call_ms": (last - triggered) / 1e6,
                    "latency_p50_ms": latency_ms([t - arrivals.sent_ns for t in received])["p50"],
                    "deliveries_per_s": len(received) / ((last - arrivals.sent_ns) / 1e9),
                }
            )
        await asyncio.sleep(0.1)
        del streams.rounds[seq]
    return measured


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
        },
    )
    async with ctx.scope():
        proc = await start_bare(ctx.procs, variant)
        streams = StreamSet(channels(proc.address, n, s.streams_per_channel), bare_hold)
        try:
            bare_register = await streams.open(n, s.register_parallel)
            stubs = BareStubs(streams.channels[0])

            async def bare_trigger(seq: int) -> None:
                await stubs.fanout(wire.params(seq=seq, payload=s.payload), timeout=CALL_TIMEOUT)

            bare_rounds = await _rounds(streams, bare_trigger, s.fanout_rounds, s.payload)
        finally:
            await streams.close()
    async with ctx.scope():
        system = await start_system(ctx.procs, variant)
        streams = StreamSet(channels(system.gate_address, n, s.streams_per_channel), gate_register)
        try:
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

            system_rounds = await _rounds(streams, system_trigger, s.fanout_rounds, s.payload)
        finally:
            await streams.close()
    a, b = _fanout_summary(bare_rounds), _fanout_summary(system_rounds)
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
    result.details = {
        "bare": {"register_s": bare_register, **a, "rounds": bare_rounds},
        "system": {"register_s": system_register, **b, "rounds": system_rounds},
    }
    for side, summary in (("bare", a), ("system", b)):
        if summary["complete_rounds"] != s.fanout_rounds:
            result.notes.append(
                f"INCOMPLETE: {side}: {summary['complete_rounds']} of {s.fanout_rounds} rounds "
                "reached every client"
            )
    return result
