"""Scenario 4, connections: gate RSS per idle registered client, and the time to register them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from bench.clients import StreamSet, bare_hold, gate_register
from bench.cluster import Variant, start_bare, start_system
from bench.procs import Proc
from bench.results_model import ScenarioResult
from bench.scenarios._context import Ctx, channels, result_key, title_suffix


async def _hold_connections(
    ctx: Ctx, proc: Proc, address: str, open_stream: Callable[[Any], Any]
) -> tuple[int, list[dict[str, Any]]]:
    s = ctx.settings
    levels = sorted(s.connections)
    await asyncio.sleep(s.settle)
    idle = proc.rss_kib()
    streams = StreamSet(channels(address, levels[-1], s.streams_per_channel), open_stream)
    measured: list[dict[str, Any]] = []
    try:
        for level in levels:
            seconds = await streams.open(level - len(streams), s.register_parallel)
            await asyncio.sleep(s.settle)
            rss = proc.rss_kib()
            measured.append(
                {
                    "clients": level,
                    "register_s": seconds,
                    "registered_per_s": (level - (measured[-1]["clients"] if measured else 0))
                    / seconds,
                    "rss_mib": rss / 1024,
                    "kib_per_client": (rss - idle) / level,
                }
            )
    finally:
        await streams.close()
    return idle, measured


async def connections(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    result = ScenarioResult(
        result_key("connections", variant),
        "4. Connections: idle registered clients held by one process" + title_suffix(variant),
        params={
            "clients": list(s.connections),
            "streams_per_connection": s.streams_per_channel,
            "registering_at_once": s.register_parallel,
            "clients_are": "raw GateService.Register streams (not SDK clients)",
            "rss": "VmRSS of the gate (bare: of the bare server) after settling "
            f"{s.settle}s; per client = (RSS - idle RSS) / clients",
            "register_time": "from opening the streams to every `registered` event "
            "(incremental: the second level adds clients to the first)",
        },
    )
    async with ctx.scope():
        proc = await start_bare(ctx.procs, variant)
        bare_idle, bare = await _hold_connections(ctx, proc, proc.address, bare_hold)
    async with ctx.scope():
        system = await start_system(ctx.procs, variant)
        gate_idle, gate = await _hold_connections(
            ctx, system.gate, system.gate_address, gate_register
        )
    for a, b in zip(bare, gate, strict=True):
        case = f"{a['clients']} clients"
        result.add(case, "RSS per client", "KiB", a["kib_per_client"], b["kib_per_client"], "lower")
        result.add(case, "RSS", "MiB", a["rss_mib"], b["rss_mib"], "lower")
        result.add(case, "time to register", "s", a["register_s"], b["register_s"], "lower")
    result.details = {
        "bare": {"idle_rss_mib": bare_idle / 1024, "levels": bare},
        "system": {"idle_rss_mib": gate_idle / 1024, "levels": gate},
    }
    return result
