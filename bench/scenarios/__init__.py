"""The scenarios. Each measures the bare grpc.aio baseline and the system in the same run.

1. ``calls``: closed-loop calls of ``Echo.Echo`` through gate and node vs a bare unary echo.
2. ``push``: one object pushes N stamped messages to one client vs a bare server stream.
3. ``fanout``: one broadcast to many connected clients vs a bare server writing to many streams.
4. ``connections``: gate RSS per idle registered client, and time to register them.
5. ``lifecycle``: SIGTERM-to-exit with many streams; node restart until pushes flow again.
6. ``tracing``: scenario 1's system side with tracing off and on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.protobuf.wrappers_pb2 import BytesValue, Int64Value, StringValue

from bench import wire
from bench.clients import (
    CALL_TIMEOUT,
    BareStubs,
    LoadResult,
    StreamSet,
    bare_hold,
    closed_loop,
    echo_request,
    gate_register,
    raw_channel,
)
from bench.cluster import Variant, node_dropped, start_bare, start_system
from bench.machine import load_average
from bench.procs import PYTHON, Proc, Procs, free_port
from bench.profiling import PY_SPY_ARGS, py_spy, summarize_file
from bench.results_model import ScenarioResult
from bench.stats import latency_ms, median
from goverse.client import Client
from goverse.v1 import gate_pb2, gate_pb2_grpc
from goverse.wire import CLIENT_ID_KEY, CREDENTIAL_KEY

PUSH_TIMEOUT = 120.0
ROUND_TIMEOUT = 30.0
RECOVERY_TIMEOUT = 60.0
STREAMS_END_TIMEOUT = 15.0


@dataclass
class Settings:
    """The parameters of a run; ``quick`` shortens everything for validating the harness."""

    quick: bool = False
    warmup: float = 1.0
    duration: float = 5.0
    concurrency: tuple[int, ...] = (1, 8, 64)
    payload: int = 64
    push_count: int = 20_000
    push_yield_every: int = 32
    push_backoff_ms: float = 1.0
    push_paced_rate: float = 1000.0
    push_paced_seconds: float = 3.0
    fanout_clients: int = 1000
    fanout_rounds: int = 10
    connections: tuple[int, ...] = (1000, 5000)
    streams_per_channel: int = 1
    register_parallel: int = 256
    shutdown_streams: int = 1000
    recovery_interval: float = 0.02
    tracing: tuple[str, ...] = ("otlp",)
    settle: float = 2.0

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(
            quick=True,
            warmup=0.3,
            duration=1.5,
            push_count=5_000,
            push_paced_seconds=1.0,
            fanout_rounds=3,
            connections=(1000, 2000),
            settle=1.0,
        )

    def to_json(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self.__dataclass_fields__}


@dataclass
class Ctx:
    """What every scenario gets: settings, the process owner, and where to put files."""

    settings: Settings
    procs: Procs
    run_dir: Path
    profile: bool = False
    profiles: list[dict[str, Any]] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def scope(self) -> AsyncIterator[None]:
        """Stops every process started inside the block when it ends, however it ends."""
        mark = len(self.procs.started)
        try:
            yield
        finally:
            await self.procs.stop(*[p for p in self.procs.started[mark:] if p.alive()])

    @contextlib.asynccontextmanager
    async def profiled(self, label: str, targets: dict[str, Proc]) -> AsyncIterator[None]:
        """Records the `targets` with py-spy during the block (only in profile runs)."""
        spy = py_spy() if self.profile else None
        if spy is None:
            yield
            return
        out_dir = self.run_dir / "profiles"
        out_dir.mkdir(parents=True, exist_ok=True)
        spies: list[tuple[str, Proc, Path]] = []
        for name, target in targets.items():
            out = out_dir / f"{label}-{name}.txt"
            args = [spy, "record", "-p", str(target.pid), "-o", str(out), *PY_SPY_ARGS]
            spies.append((name, self.procs.spawn(f"py-spy-{label}-{name}", args), out))
        await asyncio.sleep(1.0)  # py-spy attaches
        try:
            yield
        finally:
            for _, proc, _ in spies:
                proc.send(signal.SIGINT)
            for name, proc, out in spies:
                if not await proc.wait_exit(30):
                    proc.kill()
                if out.exists():
                    summary = summarize_file(out)
                    (out_dir / f"{label}-{name}.summary.txt").write_text(
                        summary.render(f"{label} {name}")
                    )
                    self.profiles.append(
                        {"label": label, "process": name, "file": str(out), **summary.to_json()}
                    )


# -- 1. calls ----------------------------------------------------------------------------------


async def _bare_calls(ctx: Ctx, variant: Variant, payload: bytes) -> dict[int, LoadResult]:
    s = ctx.settings
    results: dict[int, LoadResult] = {}
    async with ctx.scope():
        proc = await start_bare(ctx.procs, variant)
        channel = raw_channel(proc.address)
        stubs = BareStubs(channel)
        ids = [f"echo-{index}" for index in range(max(s.concurrency))]

        async def call(worker: int) -> None:
            reply = await stubs.echo(echo_request(ids[worker], payload), timeout=CALL_TIMEOUT)
            out = BytesValue()
            if not reply.response.Unpack(out):
                raise RuntimeError("the echo is not a BytesValue")

        try:
            for level in s.concurrency:
                async with ctx.profiled(f"calls-c{level}-{variant.label}", {"bare": proc}):
                    results[level] = await closed_loop(
                        call, level, warmup=s.warmup, duration=s.duration
                    )
        finally:
            await channel.close()
    return results


async def _system_calls(
    ctx: Ctx, variant: Variant, payload: bytes
) -> tuple[dict[int, LoadResult], list[Path]]:
    """Scenario 1's system side; also returns the services' log files."""
    s = ctx.settings
    results: dict[int, LoadResult] = {}
    async with ctx.scope():
        system = await start_system(ctx.procs, variant)
        ids = [f"echo-{index}" for index in range(max(s.concurrency))]
        async with Client(
            [system.gate_address], call_timeout=timedelta(seconds=CALL_TIMEOUT)
        ) as client:

            async def call(worker: int) -> None:
                await client.call(
                    "Echo", ids[worker], "Echo", BytesValue(value=payload), BytesValue
                )

            for object_id in ids:  # activation is not what we measure
                await client.call("Echo", object_id, "Echo", BytesValue(value=payload), BytesValue)
            for level in s.concurrency:
                targets = {"gate": system.gate, "node": system.node}
                async with ctx.profiled(f"calls-c{level}-{variant.label}", targets):
                    results[level] = await closed_loop(
                        call, level, warmup=s.warmup, duration=s.duration
                    )
        logs = [system.gate.log_path, system.node.log_path]
    return results, logs


def _call_rows(
    result: ScenarioResult, a: dict[int, LoadResult], b: dict[int, LoadResult], suffix: str = ""
) -> None:
    for level in sorted(set(a) & set(b)):
        case = f"concurrency {level}{suffix}"
        la, lb = latency_ms(a[level].latencies_ns), latency_ms(b[level].latencies_ns)
        result.add(case, "calls/s", "1/s", a[level].calls_per_second, b[level].calls_per_second)
        result.add(case, "latency p50", "ms", la["p50"], lb["p50"], "lower")
        result.add(case, "latency p99", "ms", la["p99"], lb["p99"], "lower")


async def calls(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    result = ScenarioResult(
        _key("calls", variant),
        "1. Calls: client -> gate -> node -> back, Echo.Echo" + _title_suffix(variant),
        params={
            "concurrency": list(s.concurrency),
            "payload_bytes": s.payload,
            "warmup_s": s.warmup,
            "measure_s": s.duration,
            "loop": variant.loop,
            "code": variant.code or "work tree",
            "bare": "unary echo of the same CallObjectRequest, packed and unpacked the same way",
            "system": "goverse.client.Client.call, one Echo object per worker",
        },
    )
    payload = b"x" * s.payload
    bare = await _bare_calls(ctx, variant, payload)
    system, _ = await _system_calls(ctx, variant, payload)
    _call_rows(result, bare, system)
    result.details = {
        "errors": {
            "bare": {level: r.errors for level, r in bare.items()},
            "system": {level: r.errors for level, r in system.items()},
        }
    }
    return result


# -- 2. push -----------------------------------------------------------------------------------


@dataclass
class Received:
    """What one burst delivered to the client."""

    expected: int
    received: int = 0
    out_of_order: int = 0
    last_seq: int = -1
    first_sent_ns: int = 0
    last_received_ns: int = 0
    stream_messages: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, message: any_pb2.Any, now: int) -> None:
        seq, sent = wire.unpack_stamp(message)
        if self.received == 0:
            self.first_sent_ns = sent
        if seq < self.last_seq:
            self.out_of_order += 1
        self.last_seq = seq
        self.received += 1
        self.last_received_ns = now
        self.latencies_ns.append(now - sent)
        if self.received >= self.expected:
            self.done.set()

    @property
    def rate(self) -> float:
        span = self.last_received_ns - self.first_sent_ns
        return self.received / (span / 1e9) if span > 0 else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "received": self.received,
            "out_of_order": self.out_of_order,
            "stream_messages": self.stream_messages or None,
            "messages_per_s": self.rate,
            "latency_ms": latency_ms(self.latencies_ns),
        }


async def _bare_burst(stubs: BareStubs, count: int, payload: int, rate: float = 0.0) -> Received:
    received = Received(count)
    call = stubs.push(wire.params(count=count, payload=payload, rate=rate), timeout=PUSH_TIMEOUT)
    async with asyncio.timeout(PUSH_TIMEOUT):
        async for response in call:
            now = time.monotonic_ns()
            received.stream_messages += 1
            for message in response.messages.messages:
                received.on_message(message, now)
    return received


async def _system_burst(
    ctx: Ctx, client: Client, box: list[Received], count: int, rate: float = 0.0
) -> tuple[Received, dict[str, Any]]:
    s = ctx.settings
    received = Received(count)
    box[0] = received
    max_seconds = PUSH_TIMEOUT - 10
    reply = await client.call(
        "Pusher",
        "pusher",
        "Burst",
        wire.params(
            count=count,
            payload=s.payload,
            yield_every=s.push_yield_every,
            backoff_ms=s.push_backoff_ms,
            max_seconds=max_seconds,
            rate=rate,
        ),
        StringValue,
        timeout=PUSH_TIMEOUT,
    )
    info = wire.read_params(reply)
    received.expected = int(info["sent"])
    if received.received >= received.expected:
        received.done.set()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(30):
            await received.done.wait()
    return received, info


async def _pump(client: Client, box: list[Received]) -> None:
    async for message in client.messages():
        box[0].on_message(message, time.monotonic_ns())


async def push(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    warm = min(1000, s.push_count)
    paced = max(int(s.push_paced_rate * s.push_paced_seconds), 1)
    queue = max(s.push_count, paced) + warm
    gate_flags = [f"--client-queue-messages={queue}", "--client-queue-bytes=512MiB"]
    result = ScenarioResult(
        _key("push", variant),
        "2. Push delivery to one client" + _title_suffix(variant),
        params={
            "messages": s.push_count,
            "warmup_messages": warm,
            "paced": f"{paced} messages at {s.push_paced_rate:g}/s: latency without queueing",
            "payload_bytes": s.payload,
            "loop": variant.loop,
            "code": variant.code or "work tree",
            "object": f"Pusher.Burst: yield to the loop every {s.push_yield_every} pushes, "
            f"{s.push_backoff_ms} ms backoff when push() returns 0",
            "gate_flags": gate_flags,
            "bare": "server stream of RegisterResponse, one pushed message per stream message",
            "system": "goverse.client.Client.messages()",
        },
    )
    async with ctx.scope():
        proc = await start_bare(ctx.procs, variant)
        channel = raw_channel(proc.address)
        try:
            stubs = BareStubs(channel)
            await _bare_burst(stubs, warm, s.payload)
            async with ctx.profiled(f"push-{variant.label}", {"bare": proc}):
                bare = await _bare_burst(stubs, s.push_count, s.payload)
            bare_paced = await _bare_burst(stubs, paced, s.payload, s.push_paced_rate)
        finally:
            await channel.close()
    async with ctx.scope():
        system = await start_system(ctx.procs, variant, gate_flags=gate_flags)
        async with Client([system.gate_address]) as client:
            box = [Received(0)]
            pump = asyncio.create_task(_pump(client, box))
            try:
                await _system_burst(ctx, client, box, warm)
                async with ctx.profiled(
                    f"push-{variant.label}", {"gate": system.gate, "node": system.node}
                ):
                    got, info = await _system_burst(ctx, client, box, s.push_count)
                got_paced, _ = await _system_burst(ctx, client, box, paced, s.push_paced_rate)
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
        dropped = await node_dropped(system.node_address)
    lb, ls = latency_ms(bare.latencies_ns), latency_ms(got.latencies_ns)
    result.add("1 client", "messages/s", "1/s", bare.rate, got.rate)
    result.add("1 client", "latency p50", "ms", lb["p50"], ls["p50"], "lower")
    result.add("1 client", "latency p99", "ms", lb["p99"], ls["p99"], "lower")
    lb, ls = latency_ms(bare_paced.latencies_ns), latency_ms(got_paced.latencies_ns)
    case = f"paced {s.push_paced_rate:g}/s"
    result.add(case, "latency p50", "ms", lb["p50"], ls["p50"], "lower")
    result.add(case, "latency p99", "ms", lb["p99"], ls["p99"], "lower")
    complete = (
        got.received == got.expected == s.push_count
        and bare.received == s.push_count
        and got_paced.received == paced
        and bare_paced.received == paced
    )
    result.details = {
        "bare": bare.to_json(),
        "system": got.to_json(),
        "bare_paced": bare_paced.to_json(),
        "system_paced": got_paced.to_json(),
        "burst": info,
        "node_dropped_pushes": dropped,
        "complete": complete,
    }
    if not complete:
        result.notes.append(
            f"INCOMPLETE: system received {got.received} of {got.expected} sent "
            f"({s.push_count} requested), paced {got_paced.received} of {paced}; "
            f"bare received {bare.received}, paced {bare_paced.received}"
        )
    return result


# -- 3. fan-out --------------------------------------------------------------------------------


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


def _channels(address: str, streams: int, per_channel: int) -> list[Any]:
    return [raw_channel(address) for _ in range(max(math.ceil(streams / per_channel), 1))]


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


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def fanout(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    n = s.fanout_clients
    result = ScenarioResult(
        _key("fanout", variant),
        f"3. Fan-out: one broadcast to {n} connected clients" + _title_suffix(variant),
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
        streams = StreamSet(_channels(proc.address, n, s.streams_per_channel), bare_hold)
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
        streams = StreamSet(_channels(system.gate_address, n, s.streams_per_channel), gate_register)
        try:
            system_register = await streams.open(n, s.register_parallel)
            stub = gate_pb2_grpc.GateServiceStub(streams.channels[0])
            metadata = _metadata(streams.registered[0])

            async def system_trigger(seq: int) -> None:
                request = gate_pb2.CallObjectRequest(
                    object_type="Broadcaster",
                    object_id="broadcaster",
                    method="Broadcast",
                    request=_packed(wire.params(seq=seq, payload=s.payload)),
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


# -- 4. connections ----------------------------------------------------------------------------


async def _hold_connections(
    ctx: Ctx, proc: Proc, address: str, open_stream: Callable[[Any], Any]
) -> tuple[int, list[dict[str, Any]]]:
    s = ctx.settings
    levels = sorted(s.connections)
    await asyncio.sleep(s.settle)
    idle = proc.rss_kib()
    streams = StreamSet(_channels(address, levels[-1], s.streams_per_channel), open_stream)
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
        _key("connections", variant),
        "4. Connections: idle registered clients held by one process" + _title_suffix(variant),
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


# -- 5. shutdown and recovery ------------------------------------------------------------------


async def _sigterm_with_streams(
    ctx: Ctx, proc: Proc, address: str, open_stream: Callable[[Any], Any]
) -> dict[str, Any]:
    s = ctx.settings
    streams = StreamSet(_channels(address, s.shutdown_streams, s.streams_per_channel), open_stream)
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
        ctx.procs.spawn("bare-restarted", proc.args, proc.address, proc.env)
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
        pump = asyncio.create_task(_pump(client, box))
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
            serving = asyncio.create_task(node.wait_healthy())
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
        _key("lifecycle", variant),
        "5. Shutdown with open streams, and recovery from a node restart" + _title_suffix(variant),
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


# -- 6. tracing --------------------------------------------------------------------------------


def _tracing_env(mode: str, sink_address: str) -> dict[str, str]:
    env = {"OTEL_TRACES_EXPORTER": mode}
    if mode == "otlp":
        endpoint = f"http://{sink_address}"
        env |= {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }
    return env


def _console_spans(paths: list[Path]) -> int:
    """Spans the console exporter wrote into the services' output: lines naming a span id
    that are not log lines (log lines carry the span id too, and an "event")."""
    count = 0
    for path in paths:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if "span_id" in line and '"event":' not in line:
                    count += 1
    return count


async def tracing(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    result = ScenarioResult(
        "tracing",
        "6. Tracing off vs on, scenario 1's system side",
        a_label="traces off",
        b_label="traces on",
        params={
            "concurrency": list(s.concurrency),
            "off": "OTEL_TRACES_EXPORTER=none (as implemented now: spans are made and "
            "propagated, not exported)",
            "on": {mode: _tracing_env(mode, "<sink>") for mode in s.tracing},
            "sink": "bench.otlp_sink: an OTLP/gRPC receiver process that counts and drops spans",
        },
    )
    payload = b"x" * s.payload
    off, _ = await _system_calls(ctx, Variant("traces-off", variant.loop), payload)
    spans: dict[str, int] = {}
    for mode in s.tracing:
        async with ctx.scope():
            sink: Proc | None = None
            address = ""
            if mode == "otlp":
                address = f"127.0.0.1:{free_port()}"
                sink = ctx.procs.spawn(
                    "otlp-sink", [PYTHON, "-m", "bench.otlp_sink", f"--listen={address}"], address
                )
                await sink.wait_healthy()
            env = _tracing_env(mode, address)
            on, logs = await _system_calls(
                ctx, Variant(f"traces-{mode}", variant.loop, env), payload
            )
            if sink is not None:
                await sink.terminate()
                lines = sink.log_path.read_text(errors="replace").strip().splitlines()
                spans[mode] = int(json.loads(lines[-1])["spans"]) if lines else 0
            else:
                spans[mode] = _console_spans(logs)
        _call_rows(result, off, on, f", {mode}")
    result.details = {"spans_exported": spans}
    if not any(spans.values()):
        result.notes.append(
            "No span was exported: the services measured do not trace (or ignore "
            "OTEL_TRACES_EXPORTER), so 'on' equals 'off' up to noise."
        )
    return result


# -- helpers -----------------------------------------------------------------------------------


def _key(name: str, variant: Variant) -> str:
    return name if variant.label == "asyncio" else f"{name}-{variant.label}"


def _title_suffix(variant: Variant) -> str:
    if variant.code:
        return f" [services from {variant.code}]"
    return "" if variant.loop == "asyncio" else f" [services and bare server on {variant.loop}]"


SCENARIOS: dict[str, Callable[[Ctx, Variant], Awaitable[ScenarioResult]]] = {
    "1": calls,
    "2": push,
    "3": fanout,
    "4": connections,
    "5": lifecycle,
    "6": tracing,
}
LOOP_SCENARIOS = ("1", "2")
"""The scenarios repeated with the services on uvloop."""
CODE_SCENARIOS = ("1", "2", "3", "4", "5")
"""The scenarios repeated with the services of another checkout (``--compare-code``)."""


async def run_scenario(
    ctx: Ctx, number: str, variant: Variant, results: list[ScenarioResult]
) -> None:
    """Runs one scenario; a failure is recorded in its result and the run goes on."""
    started = time.monotonic()
    try:
        result = await SCENARIOS[number](ctx, variant)
    except Exception as error:
        result = ScenarioResult(f"{number}-{variant.label}", f"scenario {number} ({variant.label})")
        result.error = f"{type(error).__name__}: {error}"
    result.seconds = time.monotonic() - started
    result.load_average = load_average()
    results.append(result)
