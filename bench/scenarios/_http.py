"""Scenario 8, http: JSON calls of ``Echo.Echo`` through the gate's HTTP interface and the node
vs a bare aiohttp JSON echo, both over keep-alive connections; then broadcasts to 100 browser
sessions (server-sent event streams), deliveries per second."""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp

from bench import wire
from bench.clients import CALL_TIMEOUT, LoadResult, closed_loop
from bench.cluster import LISTEN, System, Variant, start_system
from bench.cpu import CpuMeter
from bench.procs import PYTHON, Proc
from bench.results_model import ScenarioResult
from bench.scenarios._calls import call_rows
from bench.scenarios._context import Ctx, load_params, result_key, title_suffix
from bench.scenarios._rounds import ALTERNATED, Side, alternate, round_details, rows
from bench.stats import median

HTTP_LISTEN = "--http-listen=127.0.0.1:0"
EVENT_STREAMS = 100
ROUND_TIMEOUT = 30.0

Arrivals = dict[int, list[tuple[int, int]]]
"""Per broadcast sequence number: (sent, received) monotonic ns of each stream's delivery."""


def echo_body(payload: int) -> bytes:
    """The JSON body of an ``Echo.Echo`` call: a BytesValue of `payload` bytes (a base64
    string in protobuf JSON)."""
    return json.dumps(base64.b64encode(b"x" * payload).decode()).encode()


def post_call(
    http: aiohttp.ClientSession, urls: list[str], body: bytes
) -> Callable[[int], Awaitable[None]]:
    """A closed-loop call: worker `n` POSTs `body` to ``urls[n]`` and reads the reply."""

    async def call(worker: int) -> None:
        async with http.post(urls[worker], data=body) as response:
            reply = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {reply[:200]!r}")

    return call


def http_session(concurrency: int) -> aiohttp.ClientSession:
    """One keep-alive connection per worker at most, as browsers and load balancers hold."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
    )


async def _load(
    ctx: Ctx, label: str, urls: list[str], body: bytes, targets: dict[str, Proc]
) -> dict[int, LoadResult]:
    """Closed-loop calls at each concurrency, measuring the CPU of the processes `targets`
    names (and the harness) inside the window, and profiling them in profile runs."""
    pids = {name: proc.pid for name, proc in targets.items()}
    results: dict[int, LoadResult] = {}
    for level in ctx.settings.concurrency:
        async with http_session(level) as http:
            call = post_call(http, urls, body)
            for worker in range(level):  # activation and connecting are not what we measure
                await call(worker)
            s = ctx.settings
            async with ctx.profiled(f"http-c{level}-{label}", targets):
                results[level] = await closed_loop(
                    call, level, warmup=s.warmup, duration=s.duration, cpu=CpuMeter(pids)
                )
    return results


async def _start_bare(ctx: Ctx, variant: Variant) -> Proc:
    proc = ctx.procs.spawn(
        "bare-http",
        [PYTHON, "-m", "bench.bare_http", LISTEN, f"--loop={variant.loop}"],
        variant.process_env(),
        ready=True,
    )
    await proc.wait_ready()
    return proc


def _bare_urls(proc: Proc, count: int) -> list[str]:
    return [f"http://{proc.address}/echo"] * count


def system_urls(system: System, count: int) -> list[str]:
    """Per worker, the URL of an ``Echo.Echo`` call to its own object through `system`'s
    HTTP gate."""
    assert system.gate.ready is not None
    address = system.gate.ready.identity["http"]
    return [f"http://{address}/v1/objects/Echo/echo-{index}/Echo" for index in range(count)]


async def _bare(ctx: Ctx, variant: Variant, body: bytes) -> dict[int, LoadResult]:
    async with ctx.scope():
        proc = await _start_bare(ctx, variant)
        urls = _bare_urls(proc, max(ctx.settings.concurrency))
        return await _load(ctx, variant.label, urls, body, {"bare": proc})


async def _system(ctx: Ctx, variant: Variant, body: bytes) -> dict[int, LoadResult]:
    async with ctx.scope():
        system = await start_system(ctx.procs, variant, gate_flags=[HTTP_LISTEN])
        urls = system_urls(system, max(ctx.settings.concurrency))
        return await _load(
            ctx, variant.label, urls, body, {"gate": system.gate, "node": system.node}
        )


async def _alternated(ctx: Ctx, variant: Variant, body: bytes) -> dict[int, tuple[Side, Side]]:
    """The calls again at each concurrency, in alternated rounds: the bare echo and the
    system both running, their calls taking turns (the figures the HTTP target reads)."""
    sides: dict[int, tuple[Side, Side]] = {}
    async with ctx.scope():
        bare = await _start_bare(ctx, variant)
        system = await start_system(ctx.procs, variant, gate_flags=[HTTP_LISTEN])
        for level in ctx.settings.concurrency:
            async with http_session(level) as bare_http, http_session(level) as system_http:
                bare_echo = post_call(bare_http, _bare_urls(bare, level), body)
                system_echo = post_call(system_http, system_urls(system, level), body)
                pair = (
                    Side({"bare": bare.pid}, {"http": bare_echo}),
                    Side.of(system, {"http": system_echo}),
                )
                for side in pair:  # activation and connecting are not what we measure
                    for worker in range(level):
                        await side.calls["http"](worker)
                await alternate(ctx, list(pair), "http", level)
                sides[level] = pair
    return sides


async def _read_events(
    response: aiohttp.ClientResponse, arrivals: Arrivals, changed: asyncio.Event
) -> None:
    """Records the arrival of every stamped push on one event stream until cancelled."""
    while line := await response.content.readline():
        if not line.startswith(b"data:"):
            continue
        data = json.loads(line[5:])
        if "message" in data and data.get("type") == "google.protobuf.BytesValue":
            seq, sent = wire.read_stamp(base64.b64decode(data["message"]))
            arrivals[seq].append((sent, time.monotonic_ns()))
            changed.set()


async def _event_streams(ctx: Ctx, variant: Variant) -> list[dict[str, float]]:
    """Broadcast rounds to :data:`EVENT_STREAMS` browser sessions on one gate: per round, the
    time from the push being made to its last delivery, and deliveries per second."""
    s = ctx.settings
    measured: list[dict[str, float]] = []
    async with ctx.scope():
        system = await start_system(ctx.procs, variant, gate_flags=[HTTP_LISTEN])
        assert system.gate.ready is not None
        base = f"http://{system.gate.ready.identity['http']}"
        arrivals: Arrivals = collections.defaultdict(list)
        changed = asyncio.Event()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            responses = [await http.get(f"{base}/v1/events") for _ in range(EVENT_STREAMS)]
            for response in responses:  # registered before the first round
                while not (await response.content.readline()).startswith(b"data:"):
                    pass
            readers = [
                asyncio.create_task(_read_events(response, arrivals, changed))
                for response in responses
            ]
            try:
                for index in range(s.fanout_rounds + 1):  # round 0 warms up
                    seq = 1_000_000 + index
                    body = json.dumps(json.dumps({"seq": seq, "payload": s.payload}))
                    url = f"{base}/v1/objects/Broadcaster/b/Broadcast"
                    async with http.post(url, data=body) as reply:
                        await reply.read()
                    async with asyncio.timeout(ROUND_TIMEOUT):
                        while len(arrivals[seq]) < EVENT_STREAMS:
                            changed.clear()
                            await changed.wait()
                    if index:
                        sent = arrivals[seq][0][0]
                        spread = (max(r for _, r in arrivals[seq]) - sent) / 1e9
                        measured.append(
                            {
                                "time_to_last_ms": spread * 1e3,
                                "deliveries_per_s": EVENT_STREAMS / spread,
                            }
                        )
            finally:
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                for response in responses:
                    response.release()
    return measured


async def http(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    result = ScenarioResult(
        result_key("http", variant),
        "8. HTTP/JSON calls: client -> gate (HTTP) -> node -> back, Echo.Echo"
        + title_suffix(variant),
        params={
            **load_params(s, variant),
            "bare": "aiohttp POST /echo: json.loads of the body, json.dumps back",
            "system": "POST /v1/objects/Echo/<id>/Echo with a BytesValue as protobuf JSON (a "
            "base64 string), one-shot caller, one Echo object per worker; aiohttp client, one "
            "keep-alive connection per worker",
        },
    )
    body = echo_body(s.payload)
    bare = await _bare(ctx, variant, body)
    system = await _system(ctx, variant, body)
    call_rows(result, bare, system)
    for level, (bare_side, system_side) in (await _alternated(ctx, variant, body)).items():
        case = f"concurrency {level}, {ALTERNATED}"
        rows(result, case, bare_side.rounds["http"], system_side.rounds["http"])
        result.details[case] = round_details({"bare": bare_side, "system": system_side}, "http")
    rounds = await _event_streams(ctx, variant)
    case = f"broadcast to {EVENT_STREAMS} event streams"
    for metric, unit, better in (
        ("deliveries_per_s", "1/s", "higher"),
        ("time_to_last_ms", "ms", "lower"),
    ):
        value = median([r[metric] for r in rounds])
        result.add(case, metric.replace("_", " "), unit, None, value, better)
    result.details |= {
        "event_stream_rounds": rounds,
        "errors": {
            "bare": {level: r.errors for level, r in bare.items()},
            "system": {level: r.errors for level, r in system.items()},
        },
    }
    return result
