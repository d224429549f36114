"""The local target: goverse-node (unix sockets) and goverse-gate (127.0.0.1) processes."""

from __future__ import annotations

import functools
from pathlib import Path

from tests.e2e.targets.base import (
    ETCD_NODE_SHUTDOWN,
    EXIT_BOUND,
    EXIT_SLACK,
    Component,
    ExportedSpan,
    Membership,
    StopResult,
    TargetError,
    stop_all,
    wait_until,
)
from tests.e2e.targets.otlp import OtlpReceiver, receiver_unavailable
from tests.helpers.cluster import joined, start_cluster
from tests.helpers.etcd import EtcdServer
from tests.helpers.processes import START_TIMEOUT, ProcessGroup, ServiceProcess

NODES = 2
GATES = 2


class LocalTarget:
    """Real processes started from this checkout's virtual environment, logs in files; with
    etcd membership, an etcd (:class:`~tests.helpers.etcd.EtcdServer`) of its own."""

    name = "local"
    stop_bound = EXIT_BOUND

    def __init__(self, log_dir: Path, membership: Membership = "etcd") -> None:
        self.membership = membership
        self.node_stop_bound = EXIT_BOUND
        self._node_extra: tuple[str, ...] = ()
        self._group = ProcessGroup(log_dir)
        self._etcd: EtcdServer | None = None
        self._receiver: OtlpReceiver | None = None
        self._env: dict[str, str] = {}
        self._names: list[str] = []
        """Every node name (unix address) handed out so far, by ordinal."""
        self._nodes: list[ServiceProcess] = []
        """Every node process started so far, by ordinal; the first :attr:`_count` run."""
        self._count = 0
        self._gates: list[ServiceProcess] = []

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if receiver_unavailable() is None:
            self._receiver = OtlpReceiver("127.0.0.1").start()
            self._env = {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": self._receiver.endpoint,
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            }
        if self.membership == "etcd":
            self._etcd = EtcdServer().start_blocking()
            self._node_extra = (f"--shutdown-timeout={ETCD_NODE_SHUTDOWN:g}s",)
            self.node_stop_bound = ETCD_NODE_SHUTDOWN + EXIT_SLACK
        cluster = start_cluster(
            self._group,
            gates=GATES,
            node_extra=self._node_extra,
            nodes=NODES,
            env=self._env,
            etcd=None if self._etcd is None else self._etcd.endpoint,
        )
        self._names = cluster.node_addresses
        self._nodes = cluster.nodes
        self._count = len(cluster.nodes)
        self._gates = cluster.gates

    def close(self) -> None:
        self._group.stop_all()
        if self._etcd is not None:
            self._etcd.close()
        if self._receiver is not None:
            self._receiver.stop()

    # -- the cluster ----------------------------------------------------------------------------

    def gate_addresses(self) -> list[str]:
        return [proc.address for proc in self._gates]

    def node_addresses(self, count: int | None = None) -> list[str]:
        count = self._count if count is None else count
        if count > len(self._names):
            self._names += self._group.node_addresses(count - len(self._names))
        return self._names[:count]

    def node_endpoints(self) -> list[str]:
        return self.node_addresses()  # the unix addresses the nodes listen on

    def scaling_unsupported(self) -> str | None:
        return "static membership: the node list is fixed" if self._etcd is None else None

    def scale_nodes(self, count: int) -> list[StopResult]:
        if self._etcd is None:
            raise TargetError("static membership: the node list is fixed")
        names = self.node_addresses(count)
        for ordinal in range(self._count, count):
            if ordinal < len(self._nodes):  # a node stopped by an earlier scale-in
                self._nodes[ordinal].start(wait=False)
            else:
                extra = (f"--etcd-endpoints={self._etcd.endpoint}", *self._node_extra)
                proc = self._group.node(names[ordinal], None, extra, wait=False, env=self._env)
                self._nodes.append(proc)
        leaving = self._nodes[count : self._count]
        starting = self._nodes[self._count : count]
        self._count = count
        for proc in starting:
            self._wait_joined(proc)
        return stop_all([functools.partial(self._terminate, proc) for proc in leaving])

    @staticmethod
    def _wait_joined(proc: ServiceProcess) -> None:
        """Waits until `proc` serves and is ready (with etcd: it joined the cluster)."""
        proc.wait_ready()
        wait_until(lambda: joined(proc.address), START_TIMEOUT, f"{proc.name} to be ready")

    def _terminate(self, proc: ServiceProcess) -> StopResult:
        code = proc.terminate(timeout=30)
        assert proc.exit_seconds is not None
        return StopResult(proc.exit_seconds, code)

    def instance_ids(self, component: Component) -> list[str]:
        if component == "gate":
            return [f"gate-{index}" for index in range(len(self._gates))]
        return self.node_addresses()

    def _proc(self, component: Component, index: int) -> ServiceProcess:
        return (self._gates if component == "gate" else self._nodes)[index]

    def stop_gate(self, index: int) -> StopResult:
        return self._terminate(self._gates[index])

    def start_gate(self, index: int) -> None:
        proc = self._gates[index]
        if not proc.alive():
            proc.start()

    def restart_node(self, index: int) -> StopResult:
        proc = self._nodes[index]
        result = self._terminate(proc)
        proc.start(wait=False)  # same socket, same name
        self._wait_joined(proc)
        return result

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
        if self._etcd is not None:
            parts.append(f"----- etcd -----\n{self._etcd.output()[-5000:]}")
        for proc in [*self._nodes, *self._gates]:
            state = "running" if proc.alive() else "exited"
            parts.append(f"----- {proc.name} ({state}) -----\n{proc.output()[-20000:]}")
        return "\n".join(parts)
