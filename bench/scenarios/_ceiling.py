"""Scenario 11, ceiling: calls relayed over gRPC streams with no work per call vs bare unary.

What issue 12's targets ask of gate and node, measured for the transport alone: a client
calls an echoing end through a relay process, every hop one grpc.aio bidirectional stream
whose messages carry every frame ready at once (:mod:`bench.grpc_relay`), against scenario
1's bare unary echo in the same run. No work per call can make the system beat this ratio;
the gap between the two is what goverse's own work per call costs.
"""

from __future__ import annotations

import os

from bench.clients import LoadResult, closed_loop, raw_channel
from bench.cluster import LISTEN, Variant
from bench.cpu import CpuMeter
from bench.grpc_relay import StreamCaller
from bench.procs import PYTHON, Proc
from bench.results_model import ScenarioResult
from bench.scenarios._calls import bare_calls, call_rows
from bench.scenarios._context import Ctx, load_params, result_key, title_suffix
from goverse.grpc_environment import OLDER_POLLER, VARIABLE


async def _start(ctx: Ctx, variant: Variant, name: str, upstream: str | None = None) -> Proc:
    args = [PYTHON, "-m", "bench.grpc_relay", LISTEN]
    if upstream is not None:
        args.append(f"--upstream={upstream}")
    # grpc's poller as gate and node have it (goverse.grpc_environment: the environment's
    # own value wins); set before the process starts, as grpc reads it when it loads.
    env = {**variant.process_env(), VARIABLE: os.environ.get(VARIABLE, OLDER_POLLER)}
    proc = ctx.procs.spawn(name, args, env, ready=True)
    await proc.wait_ready()
    return proc


async def _relayed_calls(ctx: Ctx, variant: Variant, payload: bytes) -> dict[int, LoadResult]:
    s = ctx.settings
    results: dict[int, LoadResult] = {}
    async with ctx.scope():
        end = await _start(ctx, variant, "ceiling-end")
        relay = await _start(ctx, variant, "ceiling-relay", end.address)
        channel = raw_channel(relay.address)
        try:
            async with StreamCaller(channel) as caller:

                async def call(worker: int) -> None:
                    if await caller.call(payload) != payload:
                        raise RuntimeError("the echo differs from the request")

                for level in s.concurrency:
                    async with ctx.profiled(f"ceiling-c{level}", {"relay": relay, "end": end}):
                        results[level] = await closed_loop(
                            call,
                            level,
                            warmup=s.warmup,
                            duration=s.duration,
                            cpu=CpuMeter({"relay": relay.pid, "end": end.pid}),
                        )
        finally:
            await channel.close()
    return results


async def ceiling(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    result = ScenarioResult(
        result_key("ceiling", variant),
        "11. Ceiling: client -> relay -> end over gRPC streams, no work per call"
        + title_suffix(variant),
        b_label="relay",
        params={
            **load_params(s, variant),
            "bare": "scenario 1's: unary echo of a CallObjectRequest, packed and unpacked",
            "relay": "python -m bench.grpc_relay: one bidirectional stream per hop, frames "
            "(8-byte call id, length, payload) batched per write, raw bytes, the services' "
            "grpc poller; the end echoes",
        },
    )
    payload = b"x" * s.payload
    bare = await bare_calls(ctx, variant, payload)
    relayed = await _relayed_calls(ctx, variant, payload)
    call_rows(result, bare, relayed)
    return result
