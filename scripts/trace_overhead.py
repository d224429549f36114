"""Measures what tracing costs call throughput: the same calls through a local node and gate,
with tracing off (exporter none: spans sampled out), spans recorded but not exported (exporter
none, sampler always_on), and spans exported by OTLP to an in-process collector.
Run: ``.venv/bin/python scripts/trace_overhead.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from goverse.client import Client  # noqa: E402
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest  # noqa: E402
from tests.helpers.processes import process_group  # noqa: E402
from tests.helpers.telemetry import OtlpReceiver  # noqa: E402


async def sequential(client: Client, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await client.call("Counter", "seq", "Increment", IncrementRequest(by=1), CounterValue)
    return calls / (time.perf_counter() - started)


async def concurrent(client: Client, calls: int, workers: int) -> float:
    async def worker(index: int) -> None:
        for _ in range(calls // workers):
            await client.call(
                "Counter", f"con-{index}", "Increment", IncrementRequest(by=1), CounterValue
            )

    for index in range(workers):  # activation is not what we measure
        await client.call(
            "Counter", f"con-{index}", "Increment", IncrementRequest(by=1), CounterValue
        )
    started = time.perf_counter()
    await asyncio.gather(*(worker(index) for index in range(workers)))
    return (calls // workers) * workers / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Result = tuple[float, float, float]
"""Sequential calls/s, concurrent calls/s, CPU microseconds of gate + node per call."""


async def measure(env: dict[str, str], calls: int, workers: int) -> Result:
    with tempfile.TemporaryDirectory() as logs, process_group(Path(logs)) as group:
        quiet = ("--log-level=warning",)
        # Each binds a free loopback port and reports it in its ready file.
        node = await asyncio.to_thread(lambda: group.node(extra=quiet, env=env))
        gate = await asyncio.to_thread(lambda: group.gate("bench", [node.address], quiet, env=env))
        async with Client([gate.address]) as client:
            await sequential(client, 200)  # warm up
            cpu_before = cpu_seconds(node.pid) + cpu_seconds(gate.pid)
            seq = await sequential(client, calls)
            con = await concurrent(client, calls, workers)
            cpu = cpu_seconds(node.pid) + cpu_seconds(gate.pid) - cpu_before
            made = calls + (calls // workers) * workers + workers
            return seq, con, cpu / made * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=3000, help="calls per measurement")
    parser.add_argument("--workers", type=int, default=16, help="concurrent callers")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three modes")
    args = parser.parse_args()
    receiver = OtlpReceiver().start()
    modes = {
        "off (exporter none)": {"OTEL_TRACES_EXPORTER": "none"},
        "spans, exporter none": {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_TRACES_SAMPLER": "always_on",
        },
        "spans, exporter otlp": {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        },
    }
    results: dict[str, list[Result]] = {mode: [] for mode in modes}
    try:
        for _ in range(args.rounds):
            for mode, env in modes.items():
                results[mode].append(await measure(env, args.calls, args.workers))
    finally:
        receiver.stop()
    print(f"{args.calls} calls, {args.workers} concurrent callers, {args.rounds} rounds")
    print(f"{'mode':<22}{'sequential calls/s':>22}{'concurrent calls/s':>22}{'CPU us/call':>20}")
    for mode, runs in results.items():
        cells = []
        for column in range(3):
            values = sorted(run[column] for run in runs)
            median = f"{statistics.median(values):.0f}"
            cells.append(f"{median} ({values[0]:.0f}-{values[-1]:.0f})")
        print(f"{mode:<22}{cells[0]:>22}{cells[1]:>22}{cells[2]:>20}")
    print("median (lowest-highest) over the rounds; the modes alternate within each round;")
    print("CPU us/call: user + system time of the gate and node processes per call")
    print(f"spans received by the OTLP collector: {len(receiver.spans())}")


if __name__ == "__main__":
    asyncio.run(main())
