"""What every e2e target offers the shared scenarios (tests/e2e/test_scenarios.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import grpc

Component = Literal["gate", "node"]
Membership = Literal["static", "etcd"]
MEMBERSHIPS: tuple[Membership, ...] = ("etcd", "static")
"""What a target can run; the first is the default (``--membership``)."""

EXIT_SLACK = 3.0
"""Seconds a loaded 2-core machine may add to a service's shutdown budget before it exits."""
# The services' shutdown budget is 5 s (--shutdown-timeout) plus the slack. Targets whose stop
# includes more than SIGTERM -> exit (Kubernetes' preStop sleep) add that on top.
EXIT_BOUND = 5.0 + EXIT_SLACK
ETCD_NODE_SHUTDOWN = 10.0
"""The nodes' budget with etcd membership, as the chart computes it: a leaving node hands its
shards off within 60% of it, waiting up to the handoff timeout (5 s) for their calls, plus a
second to deactivate and release: (5 + 1) / 0.6."""


class TargetError(RuntimeError):
    """A target cannot start or cannot do what a scenario asks (missing tool, bad spec...)."""


@dataclass(frozen=True)
class StopResult:
    """How a gate or node stopped: seconds from the stop request to the exit, exit code."""

    seconds: float
    exit_code: int | None
    """None when the target cannot observe it (a Kubernetes pod already gone)."""
    recorded_seconds: float | None = None
    """From the stop request to the exit time the platform recorded (Docker's
    ``State.FinishedAt``), without the time the stop command took to return; None when the
    target has no such record."""


@dataclass(frozen=True)
class ExportedSpan:
    """One span as the configured trace exporter received it."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str = ""
    resource: dict[str, str] = field(default_factory=dict)


class Target(Protocol):
    """A running goverse cluster of 2 nodes and 2 gates somewhere the test process reaches.

    Methods block (subprocesses, docker, kubectl): async scenarios call them through
    ``asyncio.to_thread``. ``start`` raises :class:`TargetError` when the target cannot run
    here; ``close`` removes everything the target made, is idempotent and is safe after a
    failed ``start``.
    """

    name: str
    membership: Membership
    """How the services learn the nodes: a static list, or etcd (nodes join and leave)."""
    stop_bound: float
    """Seconds a stopped gate may take to exit here (SIGTERM budget + slack + preStop)."""
    node_stop_bound: float
    """Seconds a stopped node may take to exit here (its budget, longer with etcd, + slack)."""
    secured: bool
    """Whether every hop speaks TLS (mutual between gates and nodes) and the gates require a
    JWT at registration (``--security``)."""

    def start(self) -> None: ...

    def close(self) -> None: ...

    def gate_addresses(self) -> list[str]:
        """host:port of each gate, reachable from the test process (index = gate index)."""
        ...

    def node_addresses(self, count: int | None = None) -> list[str]:
        """The nodes' names, what placement hashes: the list the services are configured
        with (static), or the addresses the running nodes registered (etcd). With `count`:
        the names nodes 0 … count-1 have or will have when the target runs that many (a
        StatefulSet's pod names are predictable)."""
        ...

    def node_endpoints(self) -> list[str]:
        """Where the test process reaches each running node's gRPC server (for
        NodeService.Status), index = node index."""
        ...

    def client_options(self) -> dict[str, Any]:
        """The SDK ``Client``'s keyword arguments a client of these gates needs: ``tls`` and
        ``token`` when :attr:`secured`, none in plaintext. Valid once started."""
        ...

    def node_credentials(self) -> grpc.ChannelCredentials | None:
        """What a channel the test opens to a node endpoint presents: credentials of a node
        certificate of the cluster's CA when :attr:`secured` (a node admits only gate and
        node certificates), None for an insecure channel. Valid once started."""
        ...

    def scaling_unsupported(self) -> str | None:
        """Why :meth:`scale_nodes` cannot run here (static membership), or None."""
        ...

    def scale_nodes(self, count: int) -> list[StopResult]:
        """Scales the nodes to `count` the platform's way. Up: nodes with the next ordinals
        start; returns once each is ready (it joined the cluster in etcd). Down: the highest
        ordinals get SIGTERM at once (a StatefulSet with ``Parallel`` pod management);
        returns once they exited, with how each stopped, lowest ordinal first. A stopped
        node's logs stay readable by its index until that ordinal starts again."""
        ...

    def instance_ids(self, component: Component) -> list[str]:
        """What each instance writes as its identity in its logs: gate ids (``gate_id``),
        node advertise addresses (``node``)."""
        ...

    def stop_gate(self, index: int) -> StopResult:
        """Stops gate `index` the way its platform does (SIGTERM), waits for the exit."""
        ...

    def start_gate(self, index: int) -> None:
        """Brings the cluster back to 2 serving gates after :meth:`stop_gate`."""
        ...

    def restart_node(self, index: int) -> StopResult:
        """Stops node `index` (SIGTERM) and starts it again with the same name; returns when
        it is ready again (with etcd: it joined). The result is about the stop."""
        ...

    def logs(self, component: Component, index: int) -> list[str]:
        """Every line instance `index` of `component` has written (stdout and stderr)."""
        ...

    def tracing_unsupported(self) -> str | None:
        """Why this target has no exporter to read (no OTLP receiver, no collector), or
        None. Whether the services trace at all is for the scenario to find out."""
        ...

    def exported_spans(self) -> list[ExportedSpan]:
        """The spans the configured exporter has received so far."""
        ...

    def chart_test(self) -> tuple[int, str] | None:
        """Runs the chart's `helm test` pod: (exit code, output); None when there is no
        chart on this target."""
        ...

    def diagnostics(self) -> str:
        """What to print when a scenario failed: states, logs, events."""
        ...


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1
) -> None:
    """Polls `predicate` until it is true; raises TargetError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TargetError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def stop_all(stops: Sequence[Callable[[], StopResult]]) -> list[StopResult]:
    """Runs every stop at once (each blocks until its instance exited); results in order."""
    if not stops:
        return []
    with ThreadPoolExecutor(len(stops)) as pool:
        return list(pool.map(lambda stop: stop(), stops))


class Plaintext:
    """What a target whose services speak plaintext and authenticate no client offers its
    tests (:attr:`Target.secured` False): SDK clients and channels without credentials."""

    secured = False

    def client_options(self) -> dict[str, Any]:
        return {}

    def node_credentials(self) -> grpc.ChannelCredentials | None:
        return None
