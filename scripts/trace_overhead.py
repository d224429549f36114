"""Measures what tracing costs call throughput: the same calls through a local node and gate,
with tracing off (exporter none: spans sampled out), spans recorded but not exported (exporter
none, sampler always_on), and spans exported by OTLP to a collector in its own process (the
benchmark's ``bench.otlp_sink``, which counts and drops them: a collector in this process would
compete with the callers for its interpreter).
Run: ``.venv/bin/python scripts/trace_overhead.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from goverse.client import Client  # noqa: E402
from goverse.examples.v1.counter_pb2 import CounterValue, IncrementRequest  # noqa: E402
from goverse.server import wait_ready  # noqa: E402
from tests.helpers.processes import process_group  # noqa: E402

SINK_START_TIMEOUT = 30.0
SINK_STOP_TIMEOUT = 10.0


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


@contextlib.contextmanager
def otlp_sink(directory: Path) -> Iterator[tuple[str, dict[str, int]]]:
    """An OTLP/gRPC collector process on a free loopback port: its endpoint, and what it
    received (filled in when it stops)."""
    ready = directory / "sink.ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.otlp_sink", "--listen", "127.0.0.1:0", "--ready-file", ready],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    received: dict[str, int] = {}
    try:
        bound = wait_ready(
            ready, SINK_START_TIMEOUT, pid=process.pid, alive=lambda: process.poll() is None
        )
        yield f"http://{bound.address}", received
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=SINK_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        lines = output.strip().splitlines()
        if lines:
            received.update(json.loads(lines[-1]))


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
    with tempfile.TemporaryDirectory() as directory, otlp_sink(Path(directory)) as sink:
        endpoint, received = sink
        modes = {
            "off (exporter none)": {"OTEL_TRACES_EXPORTER": "none"},
            "spans, exporter none": {
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_TRACES_SAMPLER": "always_on",
            },
            "spans, exporter otlp": {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            },
        }
        results: dict[str, list[Result]] = {mode: [] for mode in modes}
        for _ in range(args.rounds):
            for mode, env in modes.items():
                results[mode].append(await measure(env, args.calls, args.workers))
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
    print(f"spans received by the OTLP collector: {received.get('spans', 'unknown')}")


if __name__ == "__main__":
    asyncio.run(main())
