"""Scenario 6, tracing: scenario 1's system side with tracing off and on, one after the other
and, at the highest concurrency, in alternated rounds."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from bench.clients import CALL_TIMEOUT
from bench.cluster import LISTEN, Variant, start_system
from bench.procs import PYTHON, Proc
from bench.results_model import ScenarioResult
from bench.scenarios._calls import call_rows, sdk_call, system_calls
from bench.scenarios._context import Ctx
from bench.scenarios._rounds import ALTERNATED, Side, alternate, round_details, rows
from goverse.client import Client


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


async def _alternated(
    ctx: Ctx, off: Variant, on: Variant, level: int, payload: bytes
) -> tuple[Side, Side]:
    """Scenario 10's way at `level`: both systems running, rounds of calls taking turns, so
    that the machine's drift (tens of per cent within minutes) falls on both alike."""
    async with ctx.scope():
        systems = [await start_system(ctx.procs, off), await start_system(ctx.procs, on)]
        sides = [Side.of(system) for system in systems]
        ids = [f"echo-{index}" for index in range(level)]
        timeout = timedelta(seconds=CALL_TIMEOUT)
        async with (
            Client([systems[0].gate_address], call_timeout=timeout) as off_client,
            Client([systems[1].gate_address], call_timeout=timeout) as on_client,
        ):
            for side, client in zip(sides, (off_client, on_client), strict=True):
                side.calls = {"sdk": sdk_call(client, ids, payload)}
                for worker in range(level):  # activation is not what we measure
                    await side.calls["sdk"](worker)
            await alternate(ctx, sides, "sdk", level)
    return sides[0], sides[1]


async def tracing(ctx: Ctx, variant: Variant) -> ScenarioResult:
    s = ctx.settings
    result = ScenarioResult(
        "tracing",
        "6. Tracing off vs on, scenario 1's system side",
        a_label="traces off",
        b_label="traces on",
        params={
            "concurrency": list(s.concurrency),
            "off": "OTEL_TRACES_EXPORTER=none: spans sampled out (trace context "
            "propagated, no span recorded)",
            "on": {mode: _tracing_env(mode, "<sink>") for mode in s.tracing},
            "sink": "bench.otlp_sink: an OTLP/gRPC receiver process that counts and drops spans",
        },
    )
    payload = b"x" * s.payload
    off_variant = Variant("traces-off", variant.loop, code=variant.code)
    off, _ = await system_calls(ctx, off_variant, payload)
    spans: dict[str, int] = {}
    for mode in s.tracing:
        async with ctx.scope():
            sink: Proc | None = None
            address = ""
            if mode == "otlp":
                sink = ctx.procs.spawn(
                    "otlp-sink", [PYTHON, "-m", "bench.otlp_sink", LISTEN], ready=True
                )
                await sink.wait_ready()
                address = sink.address
            env = _tracing_env(mode, address)
            traced = Variant(f"traces-{mode}", variant.loop, env, code=variant.code)
            on, logs = await system_calls(ctx, traced, payload)
            level = max(s.concurrency)
            alternated = await _alternated(ctx, off_variant, traced, level, payload)
            if sink is not None:
                await sink.terminate()
                lines = sink.log_path.read_text(errors="replace").strip().splitlines()
                spans[mode] = int(json.loads(lines[-1])["spans"]) if lines else 0
            else:
                spans[mode] = _console_spans(logs)
        call_rows(result, off, on, f", {mode}")
        case = f"concurrency {level}, {mode}, {ALTERNATED}"
        rows(result, case, alternated[0].rounds["sdk"], alternated[1].rounds["sdk"])
        result.details[case] = round_details(
            {"traces off": alternated[0], "traces on": alternated[1]}, "sdk"
        )
    result.details["spans_exported"] = spans
    if not any(spans.values()):
        result.notes.append(
            "No span was exported: the services measured do not trace (or ignore "
            "OTEL_TRACES_EXPORTER), so 'on' equals 'off' up to noise."
        )
    return result
