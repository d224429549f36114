"""Runs goverse locally: a node, one gate and the demo client, on loopback; Ctrl-C stops all.

The node keeps its objects' state in ``.run/state.db`` (SQLite), so counters and chat rooms
survive a restart of ``make run``. ``--node-count N`` starts N nodes instead, keeping state in
memory (SQLite serves one node). Nodes listen on unix sockets in a private temporary
directory, the gate on 127.0.0.1:7100 (``--gate-listen``) with its HTTP/JSON interface on
127.0.0.1:7180 (``--http-listen``; the demo chat page is printed); every metrics endpoint gets
a free port. Service logs (JSON lines) go to .run/logs/; the demo's output is shown in the terminal.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from goverse.server import Ready, wait_ready

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def start(name: str, args: list[str], run_dir: Path) -> subprocess.Popen[bytes]:
    with (run_dir / "logs" / f"{name}.log").open("wb") as log:
        # A session of its own: the terminal's Ctrl-C reaches only us; we send one SIGTERM each.
        return subprocess.Popen(
            [*args, f"--ready-file={run_dir / f'{name}.ready'}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )


def wait_ready_all(services: dict[str, subprocess.Popen[bytes]], run_dir: Path) -> dict[str, Ready]:
    """Each service's ready file (so its bound addresses), once it serves."""
    ready = {}
    for name, proc in services.items():
        try:
            ready[name] = wait_ready(
                run_dir / f"{name}.ready",
                START_TIMEOUT,
                pid=proc.pid,
                alive=lambda proc=proc: proc.poll() is None,  # type: ignore[misc]
            )
        except (RuntimeError, TimeoutError) as error:
            log = run_dir / "logs" / f"{name}.log"
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"{name} did not start ({error}; see {log}):\n{tail}") from None
    return ready


def stop(services: dict[str, subprocess.Popen[bytes]]) -> bool:
    """SIGTERM to each service, then waits; kills what outlives STOP_TIMEOUT. True if clean."""
    clean = True
    for proc in services.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in services.items():
        started = time.monotonic()
        try:
            code = proc.wait(STOP_TIMEOUT)
            print(f"{name} exited with code {code} in {time.monotonic() - started:.2f}s")
            clean = clean and code == 0
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            print(f"{name} did not stop within {STOP_TIMEOUT}s and was killed")
            clean = False
    return clean


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--gate-listen",
        default="127.0.0.1:7100",
        help="where the gate listens (port 0: any free port, printed)",
    )
    parser.add_argument(
        "--http-listen",
        default="127.0.0.1:7180",
        help="where the gate serves HTTP/JSON and the demo page (port 0: any free port, printed)",
    )
    parser.add_argument(
        "--metrics",
        choices=("on", "off"),
        default="on",
        help="serve Prometheus metrics on free ports (printed)",
    )
    parser.add_argument("--rounds", type=int, default=0, help="demo rounds; 0 runs until Ctrl-C")
    parser.add_argument(
        "--node-count",
        type=int,
        default=1,
        help="nodes to start; one keeps state in RUN_DIR/state.db, more keep it in memory",
    )
    parser.add_argument(
        "--run-dir", default=str(ROOT / ".run"), help="service logs (logs/) and ready files"
    )
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    # The nodes listen on unix sockets, named before they start, so each one can be told the
    # whole node list without reserving a port; a short directory keeps the socket paths
    # under the 107-byte limit wherever the checkout is.
    sockets = Path(tempfile.mkdtemp(prefix="goverse-run-"))
    nodes = [f"unix:{sockets / f'node-{index}.sock'}" for index in range(args.node_count)]
    store = [f"--store=sqlite:{run_dir / 'state.db'}"] if args.node_count == 1 else []
    metrics = "--metrics-port=0" if args.metrics == "on" else "--metrics-port=off"

    def on_signal(signum: int, _: object) -> None:
        raise Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    services: dict[str, subprocess.Popen[bytes]] = {}
    demo: subprocess.Popen[bytes] | None = None
    code = 0
    try:
        for index, node in enumerate(nodes):
            cmd = [
                str(BIN / "goverse-node"),
                f"--listen={node}",
                f"--nodes={','.join(nodes)}",
                "--log-format=json",
                metrics,
                *store,
            ]
            services[f"node-{index}"] = start(f"node-{index}", cmd, run_dir)
        # Nodes first: a gate whose first dial is refused backs off before it calls again.
        wait_ready_all(services, run_dir)
        cmd = [
            str(BIN / "goverse-gate"),
            f"--listen={args.gate_listen}",
            f"--http-listen={args.http_listen}",
            "--gate-id=gate-local",
            f"--nodes={','.join(nodes)}",
            "--log-format=json",
            metrics,
        ]
        services["gate"] = start("gate", cmd, run_dir)
        ready = wait_ready_all(services, run_dir)
        gate = ready["gate"].address
        print(f"nodes {', '.join(nodes)} and gate {gate} are serving; logs in {run_dir}/logs")
        print(f"object state: {store[0].partition('=')[2] if store else 'in memory'}")
        served = [r.metrics_port for r in ready.values() if r.metrics_port]
        if served:
            print("metrics: " + ", ".join(f"http://127.0.0.1:{port}/metrics" for port in served))
        cli = Path(sys.executable).parent / "goverse"
        print(f"from another shell: {cli} --gate {gate} describe (or call, watch: docs/cli.md)")
        http = ready["gate"].identity["http"]
        print(f"HTTP/JSON: http://{http}/v1/describe; chat page: http://{http}/web/chat.html")
        print("demo client (Ctrl-C stops everything):", flush=True)
        demo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "goverse.examples.demo",
                f"--gates={gate}",
                f"--rounds={args.rounds}",
            ],
            cwd=ROOT,
            start_new_session=True,
        )
        code = demo.wait()
    except Stop:
        print("\nstopping ...", flush=True)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if demo is not None and demo.poll() is None:
            demo.send_signal(signal.SIGINT)
            try:
                demo.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                demo.kill()
                demo.wait()
        if not stop(services):
            code = code or 1
        shutil.rmtree(sockets, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
