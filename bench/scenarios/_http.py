"""Scenario 8, http: JSON calls of ``Echo.Echo`` through the gate's HTTP interface and the node
vs a bare aiohttp JSON echo, both over keep-alive connections."""

from __future__ import annotations

import base64
import json

import aiohttp

from bench.clients import CALL_TIMEOUT, LoadResult, closed_loop
from bench.cluster import LISTEN, Variant, start_system
from bench.procs import PYTHON
from bench.results_model import ScenarioResult
from bench.scenarios._calls import call_rows
from bench.scenarios._context import Ctx, result_key, title_suffix

HTTP_LISTEN = "--http-listen=127.0.0.1:0"


def _session(concurrency: int) -> aiohttp.ClientSession:
    """One keep-alive connection per worker at most, as browsers and load balancers hold."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
    )


async def _load(ctx: Ctx, urls: list[str], body: bytes) -> dict[int, LoadResult]:
    results: dict[int, LoadResult] = {}
    for level in ctx.settings.concurrency:
        async with _session(level) as http:

            async def call(worker: int) -> None:
                async with http.post(urls[worker], data=body) as response:
                    reply = await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {reply[:200]!r}")

            for worker in range(level):  # activation and connecting are not what we measure
                await call(worker)
            s = ctx.settings
            results[level] = await closed_loop(call, level, warmup=s.warmup, duration=s.duration)
    return results


async def _bare(ctx: Ctx, variant: Variant, body: bytes) -> dict[int, LoadResult]:
    async with ctx.scope():
        proc = ctx.procs.spawn(
            "bare-http",
            [PYTHON, "-m", "bench.bare_http", LISTEN, f"--loop={variant.loop}"],
            variant.process_env(),
            ready=True,
        )
        await proc.wait_ready()
        urls = [f"http://{proc.address}/echo"] * max(ctx.settings.concurrency)
        return await _load(ctx, urls, body)


async def _system(ctx: Ctx, variant: Variant, body: bytes) -> dict[int, LoadResult]:
    async with ctx.scope():
        system = await start_system(ctx.procs, variant, gate_flags=[HTTP_LISTEN])
        assert system.gate.ready is not None
        address = system.gate.ready.identity["http"]
        urls = [
            f"http://{address}/v1/objects/Echo/echo-{index}/Echo"
            for index in range(max(ctx.settings.concurrency))
        ]
        return await _load(ctx, urls, body)


async def http(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    result = ScenarioResult(
        result_key("http", variant),
        "8. HTTP/JSON calls: client -> gate (HTTP) -> node -> back, Echo.Echo"
        + title_suffix(variant),
        params={
            "concurrency": list(s.concurrency),
            "payload_bytes": s.payload,
            "warmup_s": s.warmup,
            "measure_s": s.duration,
            "loop": variant.loop,
            "bare": "aiohttp POST /echo: json.loads of the body, json.dumps back",
            "system": "POST /v1/objects/Echo/<id>/Echo with a BytesValue as protobuf JSON (a "
            "base64 string), one-shot caller, one Echo object per worker; aiohttp client, one "
            "keep-alive connection per worker",
        },
    )
    body = json.dumps(base64.b64encode(b"x" * s.payload).decode()).encode()
    bare = await _bare(ctx, variant, body)
    system = await _system(ctx, variant, body)
    call_rows(result, bare, system)
    result.details = {
        "errors": {
            "bare": {level: r.errors for level, r in bare.items()},
            "system": {level: r.errors for level, r in system.items()},
        }
    }
    return result
