"""Service processes for tests: start real goverse-node and goverse-gate, wait, signal, clean up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Startup includes importing grpc and protobuf on a loaded 2-core machine.
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_status(address: str, service: str = "", timeout: float = 1.0) -> int | None:
    """The health status of `service` at `address`, or None when it cannot be asked."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return None
        return int(reply.status)


@dataclass
class ServiceProcess:
    """One running goverse-node or goverse-gate, its output captured to a file."""

    name: str
    args: list[str]
    address: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    exit_seconds: float | None = None

    def start(self, wait: bool = True) -> ServiceProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        if wait:
            self.wait_healthy()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> None:
        def serving() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited during start:\n{self.output()}")
            return bool(health_status(self.address) == health_pb2.HealthCheckResponse.SERVING)

        wait_until(serving, timeout, interval=0.1, what=f"{self.name} to serve")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def terminate(self, timeout: float = 15.0) -> int:
        """Sends SIGTERM, waits for exit, records how long it took; returns the exit code."""
        assert self.process is not None
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.exit_seconds = time.monotonic() - started
        return code

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far (non-JSON lines fail the test)."""
        lines = []
        for raw in self.output().splitlines():
            if raw.strip():
                lines.append(json.loads(raw))
        return lines


def node_args(listen: str, nodes: Sequence[str], extra: Sequence[str] = ()) -> list[str]:
    return [
        str(BIN / "goverse-node"),
        f"--listen={listen}",
        f"--advertise={listen}",
        f"--nodes={','.join(nodes)}",
        "--objects=goverse.examples.counter,goverse.examples.chat,tests.helpers.objects,"
        "tests.helpers.load_objects",
        "--log-format=json",
        "--metrics-port=off",  # tests that scrape pass a free port in `extra`
        *extra,
    ]


def gate_args(
    listen: str, gate_id: str, nodes: Sequence[str], extra: Sequence[str] = ()
) -> list[str]:
    return [
        str(BIN / "goverse-gate"),
        f"--listen={listen}",
        f"--gate-id={gate_id}",
        f"--nodes={','.join(nodes)}",
        "--log-format=json",
        "--metrics-port=off",  # tests that scrape pass a free port in `extra`
        *extra,
    ]


class ProcessGroup:
    """Owns every process a test starts and always stops them, even when the test fails."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.processes: list[ServiceProcess] = []

    def node(
        self,
        port: int,
        node_ports: Sequence[int],
        extra: Sequence[str] = (),
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        address = f"127.0.0.1:{port}"
        nodes = [f"127.0.0.1:{p}" for p in node_ports]
        proc = ServiceProcess(
            f"node-{port}",
            node_args(address, nodes, extra),
            address,
            self._log_dir / f"node-{port}.log",
            env=env or {},
        )
        self.processes.append(proc)
        return proc.start(wait)

    def gate(
        self,
        port: int,
        gate_id: str,
        node_ports: Sequence[int],
        extra: Sequence[str] = (),
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        address = f"127.0.0.1:{port}"
        nodes = [f"127.0.0.1:{p}" for p in node_ports]
        proc = ServiceProcess(
            f"gate-{gate_id}",
            gate_args(address, gate_id, nodes, extra),
            address,
            self._log_dir / f"gate-{gate_id}-{port}.log",
            env=env or {},
        )
        self.processes.append(proc)
        return proc.start(wait)

    def stop_all(self) -> None:
        for proc in self.processes:
            if proc.alive():
                with contextlib.suppress(Exception):
                    proc.terminate(timeout=10)
            proc.kill()


@contextlib.contextmanager
def process_group(log_dir: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(log_dir)
    try:
        yield group
    finally:
        group.stop_all()
