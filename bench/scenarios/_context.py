"""What every scenario shares: the run's settings, its context (processes, profiling), naming."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.clients import raw_channel
from bench.cluster import Variant
from bench.procs import Proc, Procs
from bench.profiling import PY_SPY_ARGS, py_spy, summarize_file


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
    fanout_rounds: int = 30
    connections: tuple[int, ...] = (1000, 5000)
    streams_per_channel: int = 1
    register_parallel: int = 256
    shutdown_streams: int = 1000
    recovery_interval: float = 0.02
    tracing: tuple[str, ...] = ("otlp",)
    settle: float = 2.0
    state_parts: tuple[str, ...] = ("calls", "reactivation", "rss")
    state_stores: tuple[str, ...] = ("sqlite", "postgresql")
    state_concurrency: tuple[int, ...] = (1, 64)
    state_ids: int = 10_000
    state_reactivate_ids: int = 1000
    state_reactivate_idle: float = 1.0
    state_rss_ids: int = 100_000
    state_rss_store: str = "sqlite"
    state_rss_allocators: tuple[str, ...] = ("pymalloc", "malloc")
    state_rss_min_idle: float = 10.0
    state_rss_idle: float = 0.0
    """--idle-timeout of the RSS node in seconds; 0: from the activation rate measured."""
    compare_code: str = ""
    """The checkout of ``--compare-code`` (scenario 10 runs it beside the work tree)."""
    ab_rounds: int = 16
    ab_round_warmup: float = 0.3
    ab_round_seconds: float = 1.5

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
            state_ids=1000,
            state_reactivate_ids=200,
            state_rss_ids=10_000,
            state_rss_min_idle=5.0,
            ab_rounds=4,
            ab_round_warmup=0.1,
            ab_round_seconds=0.5,
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


def load_params(settings: Settings, variant: Variant) -> dict[str, Any]:
    """The parameters every closed-loop call scenario reports (levels, payload, timing, loop)."""
    return {
        "concurrency": list(settings.concurrency),
        "payload_bytes": settings.payload,
        "warmup_s": settings.warmup,
        "measure_s": settings.duration,
        "loop": variant.loop,
    }


def result_key(name: str, variant: Variant) -> str:
    """The key of a scenario's result: its name, suffixed with the variant unless asyncio."""
    return name if variant.label == "asyncio" else f"{name}-{variant.label}"


def title_suffix(variant: Variant) -> str:
    """What a result's title says about the services measured, when not the work tree on asyncio."""
    tls = " [system over TLS, bare server plaintext]" if variant.tls is not None else ""
    if variant.code:
        return f" [services from {variant.code}]{tls}"
    if variant.loop == "asyncio":
        return tls
    return f" [services and bare server on {variant.loop}]{tls}"


def channels(address: str, streams: int, per_channel: int) -> list[Any]:
    """Enough raw channels to `address` to carry `streams` streams, `per_channel` on each."""
    return [raw_channel(address) for _ in range(max(math.ceil(streams / per_channel), 1))]
