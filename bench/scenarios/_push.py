"""Scenario 2, push: one object pushes N stamped messages to one client vs a bare server stream."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.wrappers_pb2 import StringValue

from bench import wire
from bench.clients import BareStubs, raw_channel
from bench.cluster import Variant, node_dropped, start_bare, start_system
from bench.results_model import ScenarioResult
from bench.scenarios._context import Ctx, result_key, title_suffix
from bench.stats import latency_ms
from goverse.client import Client

PUSH_TIMEOUT = 120.0


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


async def read_pushes(client: Client, box: list[Received]) -> None:
    """Hands every message pushed to `client` to the current `box[0]` (until cancelled)."""
    async for message in client.messages():
        box[0].on_message(message, time.monotonic_ns())


async def push(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    warm = min(1000, s.push_count)
    paced = max(int(s.push_paced_rate * s.push_paced_seconds), 1)
    queue = max(s.push_count, paced) + warm
    gate_flags = [f"--client-queue-messages={queue}", "--client-queue-bytes=512MiB"]
    result = ScenarioResult(
        result_key("push", variant),
        "2. Push delivery to one client" + title_suffix(variant),
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
        async with Client([system.gate_address], tls=variant.client_tls()) as client:
            box = [Received(0)]
            pump = asyncio.create_task(read_pushes(client, box))
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
        dropped = await node_dropped(system)
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
