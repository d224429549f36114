"""The kind target: a release of the chart on a Kubernetes cluster, reached by port-forward.

It attaches to what ``scripts/e2e/kind.sh`` (``make e2e-kind``) made: a kind cluster from
``tests/e2e/kind/cluster.yaml`` with the images loaded and the chart installed with
``helm install --wait`` and ``tests/e2e/kind/values.yaml``. Each gate pod is reached through its
own ``kubectl port-forward`` on a port of 127.0.0.1 that kubectl chooses (each node pod too,
for its Status). Stopping a gate or a node deletes its pod (the kubelet runs preStop, then
SIGTERM) and its controller makes a new one; with etcd membership (the release's bundled
etcd) nodes scale with ``kubectl scale statefulset``; logs are ``kubectl logs`` (followed into
a file for a node pod a scale-in removes); traces are read from the bundled OpenTelemetry
Collector's debug exporter.

Environment: ``GOVERSE_E2E_KUBE_CONTEXT`` (default ``kind-goverse-e2e``),
``GOVERSE_E2E_NAMESPACE`` and ``GOVERSE_E2E_RELEASE`` (default ``goverse`` both).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.e2e.targets.base import (
    EXIT_BOUND,
    EXIT_SLACK,
    Component,
    ExportedSpan,
    Membership,
    Plaintext,
    StopResult,
    TargetError,
    stop_all,
    wait_until,
)
from tests.e2e.targets.chart import HELM, TOOLS, expand
from tests.helpers.processes import serving

READY_TIMEOUT = 180.0
_FIELD = re.compile(r"^\s*(Trace ID|Parent ID|ID|Name)\s*:\s*(\S*)\s*$")
_ATTRIBUTE = re.compile(r"^\s*-> ([^:]+): \w+\((.*)\)\s*$")
FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")
"""The line in which ``kubectl port-forward`` names the local port it listens on."""


def parse_debug_exporter(text: str) -> list[ExportedSpan]:
    """The spans in the output of the collector's debug exporter (``verbosity: detailed``)."""
    spans: list[ExportedSpan] = []
    resource: dict[str, str] = {}
    current: dict[str, str] | None = None
    section = ""

    def flush() -> None:
        nonlocal current
        if current is not None and current.get("Trace ID"):
            spans.append(
                ExportedSpan(
                    service=resource.get("service.name", ""),
                    name=current.get("Name", ""),
                    trace_id=current["Trace ID"],
                    span_id=current.get("ID", ""),
                    parent_span_id=current.get("Parent ID", ""),
                    resource=dict(resource),
                )
            )
        current = None

    for line in text.splitlines():
        body = line.split("\t")[-1] if "\t" in line else line
        if body.startswith("ResourceSpans #"):
            flush()
            resource, section = {}, ""
        elif body.startswith("Resource attributes:"):
            section = "resource"
        elif body.startswith(("ScopeSpans #", "InstrumentationScope")):
            section = ""
        elif body.startswith("Span #"):
            flush()
            current, section = {}, "span"
        elif section == "resource" and (match := _ATTRIBUTE.match(body)):
            resource[match.group(1)] = match.group(2)
        elif (
            current is not None and (match := _FIELD.match(body)) and match.group(1) not in current
        ):
            current[match.group(1)] = match.group(2)
    flush()
    return spans


def _pre_stop(container: dict[str, Any]) -> float:
    """Seconds of the container's ``preStop: sleep N`` hook (0 without one)."""
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    return float(command[1]) if command and len(command) == 2 and command[0] == "sleep" else 0.0


class KindTarget(Plaintext):
    """The installed release: 2 nodes (StatefulSet), 2 gates (Deployment), a collector."""

    name = "kind"

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self.context = os.environ.get("GOVERSE_E2E_KUBE_CONTEXT", "kind-goverse-e2e")
        self.namespace = os.environ.get("GOVERSE_E2E_NAMESPACE", "goverse")
        self.release = os.environ.get("GOVERSE_E2E_RELEASE", "goverse")
        pinned = TOOLS / "bin" / "kubectl"
        self._kubectl = str(pinned) if pinned.exists() else (shutil.which("kubectl") or "kubectl")
        self._forwards: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
        self._gates: list[str] = []
        self._nodes: list[str] = []
        self._node_list: list[str] = []
        self._advertise = ""
        """The node pods' GOVERSE_ADVERTISE, ``$(POD_NAME)`` unexpanded."""
        self._statefulset = ""
        self._removed_logs: dict[str, Path] = {}
        self._followers: dict[str, subprocess.Popen[bytes]] = {}
        """``kubectl logs --follow`` of each node pod a scale-in removed, into a file."""
        self._pre_stop = 0.0
        self._gate_port = 0
        self._node_port = 0
        self.membership: Membership = "static"
        self.stop_bound = EXIT_BOUND
        self.node_stop_bound = EXIT_BOUND

    # -- kubectl ------------------------------------------------------------------------------

    def kubectl(self, *args: str, timeout: float = 120.0, check: bool = True) -> str:
        done = subprocess.run(
            [self._kubectl, f"--context={self.context}", f"--namespace={self.namespace}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise TargetError(f"kubectl {' '.join(args[:3])} failed: {done.stderr.strip()}")
        return done.stdout

    def _get(self, *args: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.kubectl("get", *args, "--output=json"))
        return found

    def _selector(self, component: str) -> str:
        return f"app.kubernetes.io/instance={self.release},app.kubernetes.io/component={component}"

    def _live_pods(self, component: str) -> list[dict[str, Any]]:
        pods = self._get("pods", f"--selector={self._selector(component)}")["items"]
        return sorted(
            (pod for pod in pods if not pod["metadata"].get("deletionTimestamp")),
            key=lambda pod: str(pod["metadata"]["name"]),
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if shutil.which(self._kubectl) is None and not Path(self._kubectl).exists():
            raise TargetError("kubectl is missing: run `make chart-tools`")
        try:
            self.kubectl("config", "get-contexts", self.context)
        except TargetError:
            raise TargetError(
                f"no kube context {self.context}: the kind target runs under `make e2e-kind`"
            ) from None
        self.kubectl(
            "wait",
            "--for=condition=Ready",
            "pod",
            # Not the `helm test` pod a previous run may have left: gates and nodes only.
            f"--selector=app.kubernetes.io/instance={self.release},"
            "app.kubernetes.io/component in (gate,node)",
            f"--timeout={int(READY_TIMEOUT)}s",
            timeout=READY_TIMEOUT + 30,
        )
        statefulset = self._get("statefulset", f"--selector={self._selector('node')}")["items"][0]
        self._statefulset = statefulset["metadata"]["name"]
        node_container = statefulset["spec"]["template"]["spec"]["containers"][0]
        configmap = node_container["envFrom"][0]
        data = self._get("configmap", configmap["configMapRef"]["name"])["data"]
        self.membership = "etcd" if "GOVERSE_ETCD_ENDPOINTS" in data else "static"
        self._node_list = str(data.get("GOVERSE_NODES", "")).split(",")
        env = {item["name"]: item.get("value", "") for item in node_container["env"]}
        self._advertise = str(env["GOVERSE_ADVERTISE"])
        self._node_port = int(node_container["ports"][0]["containerPort"])
        budget = float(str(data["GOVERSE_SHUTDOWN_TIMEOUT"]).removesuffix("s"))
        self.node_stop_bound = budget + EXIT_SLACK + _pre_stop(node_container)
        deployment = self._get("deployment", f"--selector={self._selector('gate')}")["items"][0]
        gate_container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {port.get("name"): port["containerPort"] for port in gate_container["ports"]}
        self._gate_port = int(ports["grpc"])
        self._pre_stop = _pre_stop(gate_container)
        self.stop_bound = EXIT_BOUND + self._pre_stop
        self._nodes = [pod["metadata"]["name"] for pod in self._live_pods("node")]
        self._gates = [pod["metadata"]["name"] for pod in self._live_pods("gate")]
        for gate in self._gates:
            self._forward(gate)
        for node in self._nodes:
            self._forward(node)

    def _forward(self, pod: str, local_port: int = 0) -> None:
        """``kubectl port-forward`` to the gate or node pod's gRPC port, on `local_port` of
        127.0.0.1 (0: one kubectl chooses, read from its "Forwarding from" line); waits until
        it answers."""
        node = pod in self._nodes
        remote_port = self._node_port if node else self._gate_port
        service = "goverse.v1.NodeService" if node else "goverse.v1.GateService"
        log_path = self._workdir / f"port-forward-{pod}.log"
        log = log_path.open("ab")
        offset = log.tell()
        with log:
            process = subprocess.Popen(
                [
                    self._kubectl,
                    f"--context={self.context}",
                    f"--namespace={self.namespace}",
                    "port-forward",
                    "--address=127.0.0.1",
                    f"pod/{pod}",
                    f"{local_port or ''}:{remote_port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._forwards[pod] = (process, local_port)

        def ready() -> bool:
            if process.poll() is not None:
                raise TargetError(f"kubectl port-forward to {pod} exited")
            port = self._forwards[pod][1]
            if not port:
                with log_path.open("rb") as out:
                    out.seek(offset)
                    found = FORWARDING.search(out.read().decode(errors="replace"))
                if found is None:
                    return False
                port = int(found.group(1))
                self._forwards[pod] = (process, port)
            return serving(f"127.0.0.1:{port}", service)

        wait_until(ready, 60, f"the port-forward to {pod}", interval=0.2)

    def _unforward(self, pod: str) -> int | None:
        entry = self._forwards.pop(pod, None)
        if entry is None:
            return None
        process, port = entry
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if process.poll() is None:
            process.kill()
        return port

    def close(self) -> None:
        for pod in list(self._forwards):
            self._unforward(pod)
        for follower in self._followers.values():
            follower.terminate()
            follower.wait(10)

    # -- the cluster ----------------------------------------------------------------------------

    def gate_addresses(self) -> list[str]:
        return [f"127.0.0.1:{self._forwards[pod][1]}" for pod in self._gates]

    def node_addresses(self, count: int | None = None) -> list[str]:
        if self.membership == "static":
            return list(self._node_list)
        count = len(self._nodes) if count is None else count
        return [
            expand(self._advertise, {"POD_NAME": f"{self._statefulset}-{ordinal}"})
            for ordinal in range(count)
        ]

    def node_endpoints(self) -> list[str]:
        return [f"127.0.0.1:{self._forwards[pod][1]}" for pod in self._nodes]

    def instance_ids(self, component: Component) -> list[str]:
        if component == "gate":
            return list(self._gates)  # GOVERSE_GATE_ID is the pod name
        return self.node_addresses()  # node i advertises entry i

    def scaling_unsupported(self) -> str | None:
        if self.membership == "static":
            return "the release has static membership: the node list is fixed"
        return None

    def scale_nodes(self, count: int) -> list[StopResult]:
        leaving = self._nodes[count:]
        for pod in leaving:  # its logs, kept after the pod is gone
            self._unforward(pod)
            path = self._workdir / f"logs-{pod}.txt"
            with path.open("wb") as out:
                follower = subprocess.Popen(
                    [
                        self._kubectl,
                        f"--context={self.context}",
                        f"--namespace={self.namespace}",
                        "logs",
                        "--follow",
                        f"pod/{pod}",
                        "--container=node",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            self._followers[pod] = follower
            self._removed_logs[pod] = path
        started = time.monotonic()
        self.kubectl("scale", f"statefulset/{self._statefulset}", f"--replicas={count}")
        results = stop_all([functools.partial(self._gone, pod, started) for pod in leaving])
        self.kubectl(
            "rollout",
            "status",
            f"statefulset/{self._statefulset}",
            f"--timeout={int(READY_TIMEOUT)}s",
            timeout=READY_TIMEOUT + 30,
        )
        self._nodes = [f"{self._statefulset}-{ordinal}" for ordinal in range(count)]
        for pod in self._nodes:
            if pod not in self._forwards:
                self._removed_logs.pop(pod, None)
                self._forward(pod)
        return results

    def _gone(self, pod: str, started: float) -> StopResult:
        """Waits until a pod a scale-in removes is gone (its exit code is not observed), then
        until its logs are all in their file (the follower ends with the container)."""
        self.kubectl(
            "wait", "--for=delete", f"pod/{pod}", "--timeout=120s", timeout=150, check=False
        )
        result = StopResult(time.monotonic() - started, None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._followers[pod].wait(30)
        return result

    def _delete(self, pod: str) -> StopResult:
        """Deletes `pod` and watches it: seconds until its container terminated (preStop
        included), and its exit code when the pod was seen terminated before it vanished."""
        started = time.monotonic()
        self.kubectl("delete", "pod", pod, "--wait=false")
        exit_code: int | None = None
        deadline = started + 120
        while time.monotonic() < deadline:
            found = self.kubectl("get", "pod", pod, "--output=json", check=False)
            if not found.strip():
                break
            data = json.loads(found)
            if data["metadata"].get("deletionTimestamp") is None:
                break  # a new pod of the same name (StatefulSet) already
            statuses = data.get("status", {}).get("containerStatuses", [])
            terminated = statuses[0].get("state", {}).get("terminated") if statuses else None
            if terminated:
                exit_code = int(terminated["exitCode"])
                break
            time.sleep(0.2)
        else:
            raise TargetError(f"pod {pod} did not terminate within 120s")
        return StopResult(time.monotonic() - started, exit_code)

    def stop_gate(self, index: int) -> StopResult:
        return self._delete(self._gates[index])

    def start_gate(self, index: int) -> None:
        old = self._gates[index]
        deployment = self._get("deployment", f"--selector={self._selector('gate')}")["items"][0]
        self.kubectl(
            "rollout",
            "status",
            f"deployment/{deployment['metadata']['name']}",
            f"--timeout={int(READY_TIMEOUT)}s",
            timeout=READY_TIMEOUT + 30,
        )
        wait_until(
            lambda: old not in {pod["metadata"]["name"] for pod in self._live_pods("gate")},
            READY_TIMEOUT,
            f"gate pod {old} to be gone",
            interval=0.5,
        )
        port = self._unforward(old)
        live = [pod["metadata"]["name"] for pod in self._live_pods("gate")]
        new = [pod for pod in live if pod not in self._gates]
        if not new:
            raise TargetError(f"no new gate pod replaced {old}: {live}")
        self._gates[index] = new[0]
        # The new pod is reached where the old one was: the port its forward released.
        self._forward(new[0], port or 0)

    def restart_node(self, index: int) -> StopResult:
        pod = self._nodes[index]
        uid = self._get("pod", pod)["metadata"]["uid"]
        result = self._delete(pod)

        def ready_again() -> bool:
            found = self.kubectl("get", "pod", pod, "--output=json", check=False)
            if not found.strip():
                return False
            data = json.loads(found)
            conditions = data.get("status", {}).get("conditions", [])
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
            return bool(data["metadata"]["uid"] != uid and ready)

        wait_until(ready_again, READY_TIMEOUT, f"node pod {pod} to be ready again", interval=0.5)
        self._forward(pod, self._unforward(pod) or 0)  # the old pod's forward ended with it
        return result

    def logs(self, component: Component, index: int) -> list[str]:
        if component == "node" and index >= len(self._nodes):
            path = self._removed_logs[f"{self._statefulset}-{index}"]
            return path.read_text(errors="replace").splitlines()
        pod = (self._gates if component == "gate" else self._nodes)[index]
        return self.kubectl("logs", f"pod/{pod}", f"--container={component}").splitlines()

    # -- telemetry and the chart ----------------------------------------------------------------

    def _collector(self) -> str | None:
        found = self._get("deployment", f"--selector={self._selector('otel-collector')}")
        return str(found["items"][0]["metadata"]["name"]) if found["items"] else None

    def tracing_unsupported(self) -> str | None:
        if self._collector() is None:
            return "the release has no OpenTelemetry Collector (otelCollector.enabled: false)"
        return None

    def exported_spans(self) -> list[ExportedSpan]:
        collector = self._collector()
        if collector is None:
            raise TargetError("no collector")
        return parse_debug_exporter(self.kubectl("logs", f"deployment/{collector}"))

    def chart_test(self) -> tuple[int, str] | None:
        done = subprocess.run(
            [
                str(HELM),
                "test",
                self.release,
                f"--kube-context={self.context}",
                f"--namespace={self.namespace}",
                "--logs",
                "--timeout=3m",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        return done.returncode, done.stdout + done.stderr

    def diagnostics(self) -> str:
        parts = [
            self.kubectl("get", "all,events", "--output=wide", check=False),
            self.kubectl("describe", "pods", check=False),
        ]
        for pod in [*self._nodes, *self._gates]:
            parts.append(f"----- {pod} -----")
            parts.append(self.kubectl("logs", f"pod/{pod}", "--all-containers", check=False))
        return "\n".join(parts)
