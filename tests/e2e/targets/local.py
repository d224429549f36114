"""The local target: 2 goverse-node and 2 goverse-gate processes on 127.0.0.1 (the venv's)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.targets.base import (
    EXIT_BOUND,
    Component,
    ExportedSpan,
    StopResult,
    TargetError,
)
from tests.e2e.targets.otlp import OtlpReceiver, receiver_unavailable
from tests.helpers.processes import ProcessGroup, ServiceProcess, free_port

NODES = 2
GATES = 2


class LocalTarget:
    """Real processes started from this checkout's virtual environment, logs in files."""

    name = "local"
    stop_bound = EXIT_BOUND

    def __init__(self, log_dir: Path) -> None:
        self._group = ProcessGroup(log_dir)
        self._receiver: OtlpReceiver | None = None
        self._node_ports = [free_port() for _ in range(NODES)]
        self._gate_ports = [free_port() for _ in range(GATES)]
        self._nodes: list[ServiceProcess] = []
        self._gates: list[ServiceProcess] = []

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        env: dict[str, str] = {}
        if receiver_unavailable() is None:
            self._receiver = OtlpReceiver("127.0.0.1").start()
            env = {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": self._receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            }
        # Nodes first, like tests/e2e/conftest.py: a gate routes its first calls at once.
        for port in self._node_ports:
            self._nodes.append(self._group.node(port, self._node_ports, wait=False, env=env))
        for proc in self._nodes:
            proc.wait_healthy()
        for index, port in enumerate(self._gate_ports):
            self._gates.append(
                self._group.gate(port, f"gate-{index}", self._node_ports, wait=False, env=env)
            )
        for proc in self._gates:
            proc.wait_healthy()

    def close(self) -> None:
        self._group.stop_all()
        if self._receiver is not None:
            self._receiver.stop()

    # -- the cluster ----------------------------------------------------------------------------

    def gate_addresses(self) -> list[str]:
        return [proc.address for proc in self._gates]

    def node_addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self._node_ports]

    def instance_ids(self, component: Component) -> list[str]:
        if component == "gate":
            return [f"gate-{index}" for index in range(len(self._gates))]
        return self.node_addresses()

    def _proc(self, component: Component, index: int) -> ServiceProcess:
        return (self._gates if component == "gate" else self._nodes)[index]

    def stop_gate(self, index: int) -> StopResult:
        proc = self._gates[index]
        code = proc.terminate(timeout=30)
        assert proc.exit_seconds is not None
        return StopResult(proc.exit_seconds, code)

    def start_gate(self, index: int) -> None:
        proc = self._gates[index]
        if not proc.alive():
            proc.start()

    def restart_node(self, index: int) -> StopResult:
        proc = self._nodes[index]
        code = proc.terminate(timeout=30)
        assert proc.exit_seconds is not None
        proc.start()  # same port, same name; waits until it serves
        return StopResult(proc.exit_seconds, code)

    def logs(self, component: Component, index: int) -> list[str]:
        return self._proc(component, index).output().splitlines()

    # -- telemetry and the chart ----------------------------------------------------------------

    def tracing_unsupported(self) -> str | None:
        if self._receiver is None:
            return receiver_unavailable() or "no OTLP receiver"
        return None

    def exported_spans(self) -> list[ExportedSpan]:
        if self._receiver is None:
            raise TargetError("no OTLP receiver runs")
        return self._receiver.spans()

    def chart_test(self) -> tuple[int, str] | None:
        return None

    def diagnostics(self) -> str:
        parts = []
        for proc in [*self._nodes, *self._gates]:
            state = "running" if proc.alive() else "exited"
            parts.append(f"----- {proc.name} ({state}) -----\n{proc.output()[-20000:]}")
        return "\n".join(parts)
