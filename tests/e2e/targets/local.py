"""The local target: 2 goverse-node (unix sockets) and 2 goverse-gate (127.0.0.1) processes."""

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
from tests.helpers.cluster import start_cluster
from tests.helpers.processes import ProcessGroup, ServiceProcess

NODES = 2
GATES = 2


class LocalTarget:
    """Real processes started from this checkout's virtual environment, logs in files."""

    name = "local"
    stop_bound = EXIT_BOUND

    def __init__(self, log_dir: Path) -> None:
        self._group = ProcessGroup(log_dir)
        self._receiver: OtlpReceiver | None = None
        self._node_addresses: list[str] = []
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
        cluster = start_cluster(self._group, gates=GATES, nodes=NODES, env=env)
        self._node_addresses = cluster.node_addresses
        self._nodes = cluster.nodes
        self._gates = cluster.gates

    def close(self) -> None:
        self._group.stop_all()
        if self._receiver is not None:
            self._receiver.stop()

    # -- the cluster ----------------------------------------------------------------------------

    def gate_addresses(self) -> list[str]:
        return [proc.address for proc in self._gates]

    def node_addresses(self) -> list[str]:
        return list(self._node_addresses)

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
        proc.start()  # same socket, same name; waits until it serves
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
