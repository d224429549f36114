"""Scenario 5, lifecycle: SIGTERM to exit with many streams; node restart until pushes flow."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.wrappers_pb2 import Int64Value

from bench.clients import (
    CALL_TIMEOUT,
    BareStubs,
    StreamSet,
    bare_hold,
    echo_request,
    gate_register,
    raw_channel,
)
from bench.cluster import Variant, start_bare, start_system
from bench.procs import Proc
from bench.results_model import ScenarioResult
from bench.scenarios._context import Ctx, channels, result_key, title_suffix
from bench.scenarios._push import Received, read_pushes
from goverse.client import Client

RECOVERY_TIMEOUT = 60.0
STREAMS_END_TIMEOUT = 15.0


async def _sigterm_with_streams(
    ctx: Ctx, proc: Proc, address: str, open_stream: Callable[[Any], Any]
) -> dict[str, Any]:
    s = ctx.settings
    streams = StreamSet(channels(address, s.shutdown_streams, s.streams_per_channel), open_stream)
    try:
        await streams.open(s.shutdown_streams, s.register_parallel)
        await asyncio.sleep(s.settle)
        async with ctx.profiled(f"shutdown-{proc.name}", {proc.name: proc}):
            signalled = time.monotonic_ns()
            exit_s = await proc.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STREAMS_END_TIMEOUT):
                await streams.all_ended.wait()
        ends = [(t - signalled) / 1e9 for t in streams.ended]
        return {
            "streams": s.shutdown_streams,
            "exit_s": exit_s,
            "exit_code": proc.popen.returncode if proc.popen else None,
            "streams_ended": len(ends),
            "all_streams_ended_s": max(ends) if len(ends) == s.shutdown_streams else None,
            "draining_events": streams.draining,
        }
    finally:
        await streams.close()


async def _bare_restart(ctx: Ctx, variant: Variant) -> dict[str, Any]:
    s = ctx.settings
    proc = await start_bare(ctx.procs, variant, "bare-restart")
    channel = raw_channel(proc.address)
    try:
        stubs = BareStubs(channel)
        await stubs.echo(echo_request("r", b"x"), timeout=CALL_TIMEOUT)
        killed = time.monotonic()
        proc.kill()
        ctx.procs.spawn("bare-restarted", proc.same_address_args(), proc.env, ready=True)
        attempts = 0
        while time.monotonic() - killed < RECOVERY_TIMEOUT:
            attempts += 1
            try:
                await stubs.echo(echo_request("r", b"x"), timeout=0.5)
                return {"serving_again_s": time.monotonic() - killed, "attempts": attempts}
            except grpc.aio.AioRpcError:
                await asyncio.sleep(s.recovery_interval)
        return {"serving_again_s": None, "attempts": attempts}
    finally:
        await channel.close()


async def _node_restart(ctx: Ctx, variant: Variant) -> dict[str, Any]:
    s = ctx.settings
    system = await start_system(ctx.procs, variant)
    async with Client([system.gate_address]) as client:
        box = [Received(1)]
        pump = asyncio.create_task(read_pushes(client, box))
        try:
            seq = 0

            async def push_one() -> int:
                nonlocal seq
                seq += 1
                reply = await client.call(
                    "Pusher", "recovery", "PushOne", Int64Value(value=seq), Int64Value, timeout=1
                )
                return int(reply.value)

            await push_one()
            async with asyncio.timeout(10):
                await box[0].done.wait()
            box[0] = Received(1)
            killed = time.monotonic()
            system.node.kill()
            node = await system.restart_node()
            restarted = time.monotonic()
            serving = asyncio.create_task(node.wait_ready())
            first_call: float | None = None
            first_queued: float | None = None
            attempts = 0
            while time.monotonic() - killed < RECOVERY_TIMEOUT and not box[0].done.is_set():
                attempts += 1
                try:
                    queued = await push_one()
                except Exception:  # UNAVAILABLE while the node is down
                    queued = -1
                now = time.monotonic() - killed
                if queued >= 0 and first_call is None:
                    first_call = now
                if queued == 1 and first_queued is None:
                    first_queued = now
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(s.recovery_interval):
                        await box[0].done.wait()
            pushed = time.monotonic() - killed if box[0].done.is_set() else None
            node_serving: float | None = None
            if serving.done() and serving.exception() is None:
                node_serving = restarted - killed + serving.result()
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            return {
                "pushes_flowing_again_s": pushed,
                "node_serving_after_s": node_serving,
                "first_call_ok_s": first_call,
                "first_push_queued_s": first_queued,
                "attempts": attempts,
                "interval_s": s.recovery_interval,
            }
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)


async def lifecycle(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    result = ScenarioResult(
        result_key("lifecycle", variant),
        "5. Shutdown with open streams, and recovery from a node restart" + title_suffix(variant),
        params={
            "streams": s.shutdown_streams,
            "streams_per_connection": s.streams_per_channel,
            "bare_shutdown": "SIGTERM: end every held stream (OK), server.stop(grace=1s), exit",
            "system_shutdown": "SIGTERM to the gate: drain (Draining event, OK), stop, exit",
            "bare_restart": "SIGKILL the bare server, start it on the same address; "
            "time until a unary echo succeeds",
            "system_restart": "SIGKILL the node, start it on the same address; time until a "
            "push from an object on it reaches the SDK client "
            f"(client calls Pusher.PushOne every {s.recovery_interval}s)",
        },
    )
    async with ctx.scope():
        proc = await start_bare(ctx.procs, variant)
        bare_stop = await _sigterm_with_streams(ctx, proc, proc.address, bare_hold)
    async with ctx.scope():
        system = await start_system(ctx.procs, variant)
        gate_stop = await _sigterm_with_streams(
            ctx, system.gate, system.gate_address, gate_register
        )
    async with ctx.scope():
        bare_restart = await _bare_restart(ctx, variant)
    async with ctx.scope():
        node_restart = await _node_restart(ctx, variant)
    case = f"SIGTERM, {s.shutdown_streams} streams"
    result.add(case, "SIGTERM to exit", "s", bare_stop["exit_s"], gate_stop["exit_s"], "lower")
    result.add(
        case,
        "SIGTERM to last stream ended",
        "s",
        bare_stop["all_streams_ended_s"],
        gate_stop["all_streams_ended_s"],
        "lower",
    )
    result.add(
        "restart (SIGKILL + start)",
        "serving again",
        "s",
        bare_restart["serving_again_s"],
        node_restart["pushes_flowing_again_s"],
        "lower",
    )
    result.details = {
        "bare_shutdown": bare_stop,
        "gate_shutdown": gate_stop,
        "bare_restart": bare_restart,
        "node_restart": node_restart,
    }
    return result
