"""Runs goverse locally: two nodes, one gate and the demo client, on loopback; Ctrl-C stops all.

Service logs (JSON lines) go to .run/logs/; the demo's output is shown in the terminal.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class Stop(Exception):
    """SIGTERM or SIGINT arrived."""


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def start(name: str, args: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    log = (log_dir / f"{name}.log").open("wb")
    # A session of its own: the terminal's Ctrl-C reaches only us; we send one SIGTERM each.
    return subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
    )


def wait_serving(services: dict[str, tuple[subprocess.Popen[bytes], str]], log_dir: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    for name, (proc, address) in services.items():
        while not serving(address):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise SystemExit(f"{name} did not start (see {log_dir}/{name}.log):\n{tail}")
            time.sleep(0.2)


def stop(services: dict[str, tuple[subprocess.Popen[bytes], str]]) -> bool:
    """SIGTERM to each service, then waits; kills what outlives STOP_TIMEOUT. True if clean."""
    clean = True
    for proc, _ in services.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, (proc, _) in services.items():
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
    parser.add_argument("--node-ports", default="7000,7001", help="ports of the two nodes")
    parser.add_argument("--gate-port", type=int, default=7100, help="port of the gate")
    parser.add_argument(
        "--metrics-ports",
        default="9464,9466,9465",
        help="Prometheus ports of node-0, node-1 and the gate (0: none)",
    )
    parser.add_argument("--rounds", type=int, default=0, help="demo rounds; 0 runs until Ctrl-C")
    parser.add_argument("--log-dir", default=str(ROOT / ".run" / "logs"), help="service logs")
    args = parser.parse_args()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    nodes = [f"127.0.0.1:{port.strip()}" for port in args.node_ports.split(",")]
    gate = f"127.0.0.1:{args.gate_port}"
    *node_metrics, gate_metrics = [port.strip() for port in args.metrics_ports.split(",")]

    def on_signal(signum: int, _: object) -> None:
        raise Stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    services: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    demo: subprocess.Popen[bytes] | None = None
    code = 0
    try:
        for index, node in enumerate(nodes):
            name = f"node-{index}"
            cmd = [
                str(BIN / "goverse-node"),
                f"--listen={node}",
                f"--advertise={node}",
                f"--nodes={','.join(nodes)}",
                "--log-format=json",
                f"--metrics-port={node_metrics[index]}",
            ]
            services[name] = (start(name, cmd, log_dir), node)
        cmd = [
            str(BIN / "goverse-gate"),
            f"--listen={gate}",
            "--gate-id=gate-local",
            f"--nodes={','.join(nodes)}",
            "--log-format=json",
            f"--metrics-port={gate_metrics}",
        ]
        services["gate"] = (start("gate", cmd, log_dir), gate)
        wait_serving(services, log_dir)
        print(f"nodes {', '.join(nodes)} and gate {gate} are serving; logs in {log_dir}")
        served = [port for port in (*node_metrics, gate_metrics) if port != "0"]
        if served:
            print("metrics: " + ", ".join(f"http://127.0.0.1:{port}/metrics" for port in served))
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
    return code


if __name__ == "__main__":
    sys.exit(main())
