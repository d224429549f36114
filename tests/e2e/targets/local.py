"""The local target: goverse-node (unix sockets) and goverse-gate (127.0.0.1) processes."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import grpc

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
)
from tests.e2e.targets.otlp import OtlpReceiver, receiver_unavailable
from tests.helpers.cluster import Cluster, ClusterTLS
from tests.helpers.etcd import EtcdServer
from tests.helpers.processes import ProcessGroup, ServiceProcess
from tests.helpers.tokens import TokenIssuer

NODES = 2
GATES = 2


class LocalTarget:
    """Real processes started from this checkout's virtual environment, logs in files, as a
    :class:`~tests.helpers.cluster.Cluster`; with etcd membership, an etcd
    (:class:`~tests.helpers.etcd.EtcdServer`) of its own. `secured` (the default): TLS on
    every hop with certificates of a test CA made at start (mutual between gates and nodes,
    health on each service's plaintext health port) and gates that require a JWT
    (:class:`~tests.helpers.tokens.TokenIssuer`)."""

    name = "local"
    stop_bound = EXIT_BOUND

    def __init__(
        self, log_dir: Path, membership: Membership = "etcd", *, secured: bool = True
    ) -> None:
        self.membership = membership
        self.secured = secured
        self._security_dir = log_dir / "security"
        self.node_stop_bound = EXIT_BOUND
        self._node_extra: tuple[str, ...] = ()
        self._group = ProcessGroup(log_dir)
        self._etcd: EtcdServer | None = None
        self._receiver: OtlpReceiver | None = None
        self._env: dict[str, str] = {}
        self._cluster = Cluster(self._group, [])
        """Every node and gate started so far, by ordinal (empty until :meth:`start`)."""
        self._count = 0
        """How many nodes run: the first ones of the cluster's."""

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
        tls, tokens = None, None
        gate_extra: tuple[str, ...] = ()
        if self.secured:
            tls = ClusterTLS.make(self._security_dir / "pki")
            tokens = TokenIssuer()
            gate_extra = tokens.gate_flags(self._security_dir)
        self._cluster = Cluster(
            self._group,
            self._group.node_addresses(NODES),
            None if self._etcd is None else self._etcd.endpoint,
            node_extra=self._node_extra,
            gate_extra=gate_extra,
            env=self._env,
            tls=tls,
            tokens=tokens,
        )
        self._count = NODES
        self._cluster.start(NODES, GATES)

    def close(self) -> None:
        self._group.stop_all()
        if self._etcd is not None:
            self._etcd.close()
        if self._receiver is not None:
            self._receiver.stop()

    # -- the cluster ----------------------------------------------------------------------------

    def gate_addresses(self) -> list[str]:
        return self._cluster.gate_addresses

    def node_addresses(self, count: int | None = None) -> list[str]:
        return self._cluster.names(self._count if count is None else count)

    def node_endpoints(self) -> list[str]:
        return self.node_addresses()  # the unix addresses the nodes listen on

    def client_options(self) -> dict[str, Any]:
        return self._cluster.client_options()

    def node_credentials(self) -> grpc.ChannelCredentials | None:
        return self._cluster.credentials

    def scaling_unsupported(self) -> str | None:
        return "static membership: the node list is fixed" if self._etcd is None else None

    def scale_nodes(self, count: int) -> list[StopResult]:
        if self._etcd is None:
            raise TargetError("static membership: the node list is fixed")
        nodes = self._cluster.nodes
        leaving = nodes[count : self._count]
        self._cluster.start_stopped(*nodes[self._count : count])  # stopped by a scale-in
        self._cluster.start_nodes(max(count - len(nodes), 0))
        self._count = count
        return stop_all([functools.partial(self._terminate, proc) for proc in leaving])

    def _terminate(self, proc: ServiceProcess) -> StopResult:
        code = proc.terminate(timeout=30)
        assert proc.exit_seconds is not None
        return StopResult(proc.exit_seconds, code)

    def instance_ids(self, component: Component) -> list[str]:
        if component == "gate":
            return self._cluster.gate_ids
        return self.node_addresses()

    def _proc(self, component: Component, index: int) -> ServiceProcess:
        return (self._cluster.gates if component == "gate" else self._cluster.nodes)[index]

    def stop_gate(self, index: int) -> StopResult:
        return self._terminate(self._cluster.gates[index])

    def start_gate(self, index: int) -> None:
        proc = self._cluster.gates[index]
        if not proc.alive():
            self._cluster.start_stopped(proc)

    def restart_node(self, index: int) -> StopResult:
        proc = self._cluster.nodes[index]
        result = self._terminate(proc)
        self._cluster.start_stopped(proc)  # same socket, same name
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
        for proc in [*self._cluster.nodes, *self._cluster.gates]:
            state = "running" if proc.alive() else "exited"
            parts.append(f"----- {proc.name} ({state}) -----\n{proc.output()[-20000:]}")
        return "\n".join(parts)
