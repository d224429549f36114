"""Service processes for tests: start real goverse-node and goverse-gate, wait, signal, clean up."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from goverse.server import Ready, wait_ready
from tests.helpers.addresses import SocketDir

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Startup includes importing grpc and protobuf on a loaded 2-core machine.
START_TIMEOUT = 30.0
ANY_PORT = "127.0.0.1:0"
"""Where a gate, or a node alone, listens: any free loopback port, read from its ready file."""


def health_status(address: str, service: str = "", timeout: float = 1.0) -> int | None:
    """The health status of `service` at `address`, or None when it cannot be asked."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return None
        return int(reply.status)


def serving(address: str, service: str = "") -> bool:
    """Whether grpc.health.v1 at `address` reports `service` SERVING (``wire.NODE_SERVICE``,
    ``wire.GATE_SERVICE``: the service's readiness; ``""``: its liveness)."""
    return bool(health_status(address, service) == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class ServiceProcess:
    """One goverse-node or goverse-gate process, its output captured to a file.

    It is started with ``--ready-file``: :meth:`start` waits (bounded) until the service wrote
    that file, and :attr:`address` is the address the file names. Started again after a stop
    or a kill, it listens where it listened before, the address its peers know: a unix socket
    path is in its flags already; a TCP service listens again on the port it bound (the port
    its predecessor released).
    """

    name: str
    args: list[str]
    log_path: Path
    ready_path: Path
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    ready: Ready | None = None
    """What the service wrote to its ready file when it last started serving."""
    exit_seconds: float | None = None

    @property
    def address(self) -> str:
        """Where a process on this machine dials the service (from its ready file)."""
        if self.ready is None:
            raise AssertionError(f"{self.name} has not reported ready")
        return self.ready.address

    @property
    def metrics_port(self) -> int:
        """The port of its metrics endpoint (started with ``--metrics-port=0``)."""
        if self.ready is None or self.ready.metrics_port is None:
            raise AssertionError(f"{self.name} serves no metrics (give --metrics-port=0)")
        return self.ready.metrics_port

    @property
    def health_address(self) -> str:
        """Where its health answers in plaintext: the ``--health-port`` when it has one,
        else its address."""
        assert self.ready is not None, f"{self.name} has not served yet"
        port = self.ready.identity.get("health_port")
        return self.ready.address if port is None else f"127.0.0.1:{port}"

    def start(self, wait: bool = True) -> ServiceProcess:
        """Starts the process; with `wait`, returns once it serves (see :meth:`wait_ready`)."""
        if self.ready is not None:  # started before: back on the address its peers know
            listen = f"--listen={self.ready.listen}"
            self.args = [listen if arg.startswith("--listen=") else arg for arg in self.args]
        self.ready_path.unlink(missing_ok=True)  # a killed process leaves its file behind
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [*self.args, f"--ready-file={self.ready_path}"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        if wait:
            self.wait_ready()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, timeout: float = START_TIMEOUT) -> Ready:
        """Waits until this process wrote its ready file (it serves: health SERVING, metrics
        bound) and returns what it says; fails the test with the process's output when it
        exits first or takes longer than `timeout` seconds."""
        try:
            ready = wait_ready(self.ready_path, timeout, pid=self.pid, alive=self.alive)
        except (RuntimeError, TimeoutError) as error:
            raise AssertionError(
                f"{self.name} did not serve ({error}):\n{self.output()[-20000:]}"
            ) from None
        if self.ready is not None and ready.address != self.ready.address:
            raise AssertionError(
                f"{self.name} came back on {ready.address}, not on {self.ready.address}"
            )
        self.ready = ready
        return ready

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


def node_args(listen: str, nodes: Sequence[str] | None, extra: Sequence[str] = ()) -> list[str]:
    """A node listening on `listen`, named by it (no ``--advertise``: a unix address, or
    127.0.0.1 and the bound port); `nodes` is the whole node list, None for a lone node."""
    return [
        str(BIN / "goverse-node"),
        f"--listen={listen}",
        *([f"--nodes={','.join(nodes)}"] if nodes is not None else []),
        "--objects=goverse.examples.counter,goverse.examples.chat,tests.helpers.objects,"
        "tests.helpers.load_objects",
        "--log-format=json",
        "--metrics-port=off",  # tests that scrape pass --metrics-port=0 in `extra`
        *extra,
    ]


def gate_args(
    listen: str, gate_id: str, nodes: Sequence[str] | None, extra: Sequence[str] = ()
) -> list[str]:
    """A gate routing to `nodes` (None: etcd membership, given in `extra`)."""
    return [
        str(BIN / "goverse-gate"),
        f"--listen={listen}",
        f"--gate-id={gate_id}",
        *([f"--nodes={','.join(nodes)}"] if nodes is not None else []),
        "--log-format=json",
        "--metrics-port=off",  # tests that scrape pass --metrics-port=0 in `extra`
        *extra,
    ]


class ProcessGroup:
    """Owns every process a test starts and always stops them, even when the test fails.

    Gates, and lone nodes, listen on ``127.0.0.1:0`` and report the port in their ready
    files (in `log_dir`, beside the logs). The nodes of a cluster listen on unix sockets that
    :meth:`node_addresses` names before they start, in a short private directory the group
    removes when it stops: every node and gate can be given the whole node list up front.
    """

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.processes: list[ServiceProcess] = []
        self._sockets: SocketDir | None = None
        self._socket_count = 0

    @property
    def log_dir(self) -> Path:
        """Where the processes' logs and ready files go (tests may put their files there)."""
        return self._log_dir

    def node_addresses(self, count: int) -> list[str]:
        """`count` new unix addresses (``unix:/tmp/gv-.../node-N.sock``) for the nodes of a
        cluster: pass them as `listen` and as `nodes` to :meth:`node`, and as `nodes` to
        :meth:`gate`. Placement names the nodes by exactly these strings."""
        if self._sockets is None:
            self._sockets = SocketDir()
        first = self._socket_count
        self._socket_count += count
        return [self._sockets.address(f"node-{n}") for n in range(first, first + count)]

    def node(
        self,
        listen: str = ANY_PORT,
        nodes: Sequence[str] | None = None,
        extra: Sequence[str] = (),
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        """Starts a node on `listen` (one of :meth:`node_addresses` for a cluster; the
        default, any free loopback port, for a node alone) that knows `nodes` (None: itself
        alone); with `wait`, returns once it serves."""
        base = Path(listen.removeprefix("unix:")).stem if listen.startswith("unix:") else "node"
        name = self._unique(base)
        proc = self._add(name, node_args(listen, nodes, extra), env)
        return proc.start(wait)

    def gate(
        self,
        gate_id: str,
        nodes: Sequence[str] | None,
        extra: Sequence[str] = (),
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> ServiceProcess:
        """Starts a gate with id `gate_id` on any free loopback port, routing to `nodes`;
        with `wait`, returns once it serves."""
        name = self._unique(f"gate-{gate_id}")
        proc = self._add(name, gate_args(ANY_PORT, gate_id, nodes, extra), env)
        return proc.start(wait)

    def _unique(self, base: str) -> str:
        taken = {proc.name for proc in self.processes}
        if base not in taken:
            return base
        return next(f"{base}-{n}" for n in itertools.count(2) if f"{base}-{n}" not in taken)

    def _add(self, name: str, args: list[str], env: dict[str, str] | None) -> ServiceProcess:
        proc = ServiceProcess(
            name,
            args,
            self._log_dir / f"{name}.log",
            self._log_dir / f"{name}.ready",
            env=env or {},
        )
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stops every process (SIGTERM, then SIGKILL), then removes the socket directory."""
        for proc in self.processes:
            if proc.alive():
                with contextlib.suppress(Exception):
                    proc.terminate(timeout=10)
            proc.kill()
        if self._sockets is not None:
            self._sockets.close()


@contextlib.contextmanager
def process_group(log_dir: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(log_dir)
    try:
        yield group
    finally:
        group.stop_all()
