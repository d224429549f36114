"""Scenario 1, calls: closed-loop ``Echo.Echo`` through gate and node vs a bare unary echo."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from google.protobuf.wrappers_pb2 import BytesValue

from bench.clients import (
    CALL_TIMEOUT,
    BareStubs,
    LoadResult,
    closed_loop,
    echo_request,
    raw_channel,
)
from bench.cluster import System, Variant, start_bare, start_system
from bench.cpu import HARNESS, CpuMeter
from bench.results_model import ScenarioResult
from bench.scenarios._context import Ctx, load_params, result_key, title_suffix
from bench.scenarios._rounds import ALTERNATED, Call, Side, alternate, round_details, rows
from bench.stats import latency_ms
from goverse.client import Client
from goverse.v1 import gate_pb2, gate_pb2_grpc
from goverse.wire import CLIENT_ID_KEY, CREDENTIAL_KEY


def bare_call(stubs: BareStubs, ids: list[str], payload: bytes) -> Call:
    """A closed-loop call: worker `n` sends the bare server a unary echo of ``ids[n]``."""

    async def call(worker: int) -> None:
        reply = await stubs.echo(echo_request(ids[worker], payload), timeout=CALL_TIMEOUT)
        out = BytesValue()
        if not reply.response.Unpack(out):
            raise RuntimeError("the echo is not a BytesValue")

    return call


def sdk_call(client: Client, ids: list[str], payload: bytes) -> Call:
    """A closed-loop call: worker `n` calls ``Echo`` ``ids[n]`` through the SDK."""

    async def call(worker: int) -> None:
        await client.call("Echo", ids[worker], "Echo", BytesValue(value=payload), BytesValue)

    return call


async def bare_calls(ctx: Ctx, variant: Variant, payload: bytes) -> dict[int, LoadResult]:
    """Scenario 1's baseline (scenario 11's too): unary echoes of a bare server."""
    s = ctx.settings
    results: dict[int, LoadResult] = {}
    async with ctx.scope():
        proc = await start_bare(ctx.procs, variant)
        channel = raw_channel(proc.address)
        call = bare_call(BareStubs(channel), _ids(s.concurrency), payload)
        try:
            for level in s.concurrency:
                async with ctx.profiled(f"calls-c{level}-{variant.label}", {"bare": proc}):
                    results[level] = await closed_loop(
                        call,
                        level,
                        warmup=s.warmup,
                        duration=s.duration,
                        cpu=CpuMeter({"bare": proc.pid}),
                    )
        finally:
            await channel.close()
    return results


async def system_calls(
    ctx: Ctx, variant: Variant, payload: bytes
) -> tuple[dict[int, LoadResult], list[Path]]:
    """Scenario 1's system side; also returns the services' log files."""
    s = ctx.settings
    results: dict[int, LoadResult] = {}
    async with ctx.scope():
        system = await start_system(ctx.procs, variant)
        ids = _ids(s.concurrency)
        async with _client(system, variant) as client:
            call = sdk_call(client, ids, payload)
            for worker in range(len(ids)):  # activation is not what we measure
                await call(worker)
            for level in s.concurrency:
                targets = {"gate": system.gate, "node": system.node}
                async with ctx.profiled(f"calls-c{level}-{variant.label}", targets):
                    results[level] = await closed_loop(
                        call,
                        level,
                        warmup=s.warmup,
                        duration=s.duration,
                        cpu=CpuMeter({"gate": system.gate.pid, "node": system.node.pid}),
                    )
        logs = [system.gate.log_path, system.node.log_path]
    return results, logs


async def alternated_calls(
    ctx: Ctx, variant: Variant, payload: bytes
) -> dict[int, tuple[Side, Side]]:
    """Scenario 1 again at each concurrency, in alternated rounds: the bare server and the
    system both running, their calls taking turns (the figures the call targets read)."""
    s = ctx.settings
    sides: dict[int, tuple[Side, Side]] = {}
    async with ctx.scope():
        bare = await start_bare(ctx.procs, variant)
        system = await start_system(ctx.procs, variant)
        ids = _ids(s.concurrency)
        channel = raw_channel(bare.address)
        try:
            async with _client(system, variant) as client:
                bare_echo = bare_call(BareStubs(channel), ids, payload)
                system_echo = sdk_call(client, ids, payload)
                for call in (bare_echo, system_echo):  # activation is not what we measure
                    for worker in range(len(ids)):
                        await call(worker)
                for level in s.concurrency:
                    pair = (
                        Side({"bare": bare.pid}, {"calls": bare_echo}),
                        Side.of(system, {"calls": system_echo}),
                    )
                    await alternate(ctx, list(pair), "calls", level)
                    sides[level] = pair
        finally:
            await channel.close()
    return sides


def alternated_rows(result: ScenarioResult, sides: dict[int, tuple[Side, Side]]) -> None:
    """The rows (and the rounds, in the details) of :func:`alternated_calls`."""
    for level, (bare, system) in sides.items():
        case = f"concurrency {level}, {ALTERNATED}"
        rows(result, case, bare.rounds["calls"], system.rounds["calls"])
        result.details[case] = round_details({"bare": bare, "system": system}, "calls")


def _ids(levels: Sequence[int]) -> list[str]:
    """One Echo object per worker at the highest concurrency."""
    return [f"echo-{index}" for index in range(max(levels))]


def _client(system: System, variant: Variant) -> Client:
    return Client(
        [system.gate_address],
        call_timeout=timedelta(seconds=CALL_TIMEOUT),
        tls=variant.client_tls(),
    )


async def system_unary_calls(ctx: Ctx, variant: Variant, payload: bytes) -> dict[int, LoadResult]:
    """Scenario 1's system side for a plain gRPC client: one raw Register stream, then unary
    ``CallObject`` calls carrying its credential (the path kept for grpcurl and other
    languages; the SDK sends its calls over its Session stream)."""
    s = ctx.settings
    results: dict[int, LoadResult] = {}
    async with ctx.scope():
        system = await start_system(ctx.procs, variant)
        ids = _ids(s.concurrency)
        channel = raw_channel(system.gate_address, credentials=variant.gate_credentials)
        try:
            stub = gate_pb2_grpc.GateServiceStub(channel)
            stream = stub.Register(gate_pb2.RegisterRequest())
            first = await asyncio.wait_for(stream.read(), CALL_TIMEOUT)
            metadata = (
                (CLIENT_ID_KEY, first.registered.client_id),
                (CREDENTIAL_KEY, first.registered.credential),
            )

            async def call(worker: int) -> None:
                reply = await stub.CallObject(
                    echo_request(ids[worker], payload), timeout=CALL_TIMEOUT, metadata=metadata
                )
                out = BytesValue()
                if not reply.response.Unpack(out):
                    raise RuntimeError("the echo is not a BytesValue")

            for index in range(len(ids)):  # activation is not what we measure
                await call(index)
            for level in s.concurrency:
                targets = {"gate": system.gate, "node": system.node}
                async with ctx.profiled(f"unary-calls-c{level}-{variant.label}", targets):
                    results[level] = await closed_loop(
                        call, level, warmup=s.warmup, duration=s.duration
                    )
            stream.cancel()
        finally:
            await channel.close()
    return results


def call_rows(
    result: ScenarioResult, a: dict[int, LoadResult], b: dict[int, LoadResult], suffix: str = ""
) -> None:
    """Adds the rows of scenario 1 (calls/s, p50, p99 per concurrency level) of sides a and b."""
    for level in sorted(set(a) & set(b)):
        case = f"concurrency {level}{suffix}"
        la, lb = latency_ms(a[level].latencies_ns), latency_ms(b[level].latencies_ns)
        result.add(case, "calls/s", "1/s", a[level].calls_per_second, b[level].calls_per_second)
        result.add(case, "latency p50", "ms", la["p50"], lb["p50"], "lower")
        result.add(case, "latency p99", "ms", la["p99"], lb["p99"], "lower")
        cpu_rows(result, case, a[level], b[level])


def cpu_rows(result: ScenarioResult, case: str, a: LoadResult, b: LoadResult) -> None:
    """CPU per call of the calling client and of the servers (bare: its server; system: gate
    and node together, then each), and how many cores all of them kept busy."""
    if a.cpu is None or b.cpu is None:
        return
    ma, mb = a.cpu.per_call_ms(a.completed), b.cpu.per_call_ms(b.completed)
    if not ma or not mb:
        return
    cpu_per_unit_rows(result, case, "call", ma, mb)
    result.add(case, "cores busy", "cores", a.cpu.cores_busy, b.cpu.cores_busy)


def cpu_per_unit_rows(
    result: ScenarioResult, case: str, unit: str, a: dict[str, float], b: dict[str, float]
) -> None:
    """Milliseconds of CPU per `unit` (a call, a delivery) by process, bare `a` against system
    `b`: the bench process (:data:`HARNESS`), the servers together, then each system server."""
    servers_a = sum(ms for name, ms in a.items() if name != HARNESS)
    servers_b = sum(ms for name, ms in b.items() if name != HARNESS)
    result.add(case, f"CPU per {unit}, client", "ms", a[HARNESS], b[HARNESS], "lower")
    result.add(case, f"CPU per {unit}, servers", "ms", servers_a, servers_b, "lower")
    for name in sorted(set(b) - {HARNESS}):
        result.add(case, f"CPU per {unit}, {name}", "ms", None, b[name], "lower")


async def calls(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    result = ScenarioResult(
        result_key("calls", variant),
        "1. Calls: client -> gate -> node -> back, Echo.Echo" + title_suffix(variant),
        params={
            **load_params(s, variant),
            "code": variant.code or "work tree",
            "bare": "unary echo of the same CallObjectRequest, packed and unpacked the same way",
            "system": "goverse.client.Client.call (its Session stream), one Echo object per "
            "worker; the 'unary' cases: a plain gRPC client (raw Register, unary CallObject "
            "with the credential)",
        },
    )
    payload = b"x" * s.payload
    bare = await bare_calls(ctx, variant, payload)
    system, _ = await system_calls(ctx, variant, payload)
    call_rows(result, bare, system)
    unary = await system_unary_calls(ctx, variant, payload)
    call_rows(result, bare, unary, ", unary (plain gRPC client)")
    result.details = {
        "errors": {
            "bare": {level: r.errors for level, r in bare.items()},
            "system": {level: r.errors for level, r in system.items()},
            "unary": {level: r.errors for level, r in unary.items()},
        }
    }
    alternated_rows(result, await alternated_calls(ctx, variant, payload))
    return result
