"""Scenario 9, relay: an object calling another object on its own node and on the other node,
vs the client calling that object directly (how much the node → node hop costs)."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from datetime import timedelta

from google.protobuf.wrappers_pb2 import BytesValue, StringValue

from bench import wire
from bench.clients import CALL_TIMEOUT, LoadResult, closed_loop
from bench.cluster import Pair, Variant, start_pair
from bench.results_model import ScenarioResult
from bench.scenarios._calls import call_rows
from bench.scenarios._context import Ctx, load_params, result_key, title_suffix
from goverse.client import Client
from goverse.placement import Placement
from tests.helpers.addresses import SocketDir

Call = Callable[[int], Awaitable[None]]


def _echo_ids(placement: Placement, relays: list[str], *, same_node: bool) -> list[str]:
    """For each relay, the first ``Echo`` id placed on its node (or on the other one)."""

    def first(relay: str) -> str:
        home = placement.node_for("Relay", relay)
        candidates = (f"echo-{relay}-{index}" for index in itertools.count())
        return next(c for c in candidates if (placement.node_for("Echo", c) == home) is same_node)

    return [first(relay) for relay in relays]


async def _levels(
    ctx: Ctx, call: Call, workers: int, label: str, pair: Pair
) -> dict[int, LoadResult]:
    """Activates every worker's objects with one call each, then runs each concurrency level."""
    s = ctx.settings
    for worker in range(workers):
        await call(worker)
    results: dict[int, LoadResult] = {}
    targets = {"gate": pair.gate, "node-0": pair.nodes[0], "node-1": pair.nodes[1]}
    for level in s.concurrency:
        async with ctx.profiled(f"relay-{label}-c{level}", targets):
            results[level] = await closed_loop(call, level, warmup=s.warmup, duration=s.duration)
    return results


async def relay(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    result = ScenarioResult(
        result_key("relay", variant),
        "9. Relay: object -> object on the same node and across nodes" + title_suffix(variant),
        a_label="direct",
        b_label="relayed",
        params={
            **load_params(s, variant),
            "cluster": "two nodes (static list, unix sockets), one gate; SDK client",
            "direct": "Echo.Echo called by the client (through gate and node)",
            "relayed": "Relay.Forward called by the client, which calls Echo.Echo of an "
            "object on its own node ('same node') or on the other node ('across nodes': "
            "over the calling node's Calls stream to the other node since 390e29f, a unary "
            "NodeService.CallObject before); one Relay and one Echo object per worker",
        },
    )
    workers = max(s.concurrency)
    relays = [f"relay-{worker}" for worker in range(workers)]
    payload = BytesValue(value=b"x" * s.payload)
    sockets = SocketDir()
    try:
        async with ctx.scope():
            pair = await start_pair(ctx.procs, variant, sockets)
            placement = Placement(pair.addresses)
            async with Client(
                [pair.gate.address], call_timeout=timedelta(seconds=CALL_TIMEOUT)
            ) as client:
                remote = _echo_ids(placement, relays, same_node=False)

                async def direct(worker: int) -> None:
                    await client.call("Echo", remote[worker], "Echo", payload, BytesValue)

                measured = {"direct": await _levels(ctx, direct, workers, "direct", pair)}
                for name, same_node in (("same node", True), ("across nodes", False)):
                    requests = [
                        wire.params(target=target, payload=s.payload)
                        for target in _echo_ids(placement, relays, same_node=same_node)
                    ]

                    async def relayed(worker: int, requests: list[StringValue] = requests) -> None:
                        request = requests[worker]
                        await client.call("Relay", relays[worker], "Forward", request, BytesValue)

                    label = name.replace(" ", "-")
                    measured[name] = await _levels(ctx, relayed, workers, label, pair)
    finally:
        sockets.close()
    for name in ("same node", "across nodes"):
        call_rows(result, measured["direct"], measured[name], f", {name}")
    result.details = {
        "errors": {
            name: {k: r.errors for k, r in levels.items()} for name, levels in measured.items()
        }
    }
    return result
