"""The kind target: a release of the chart on a Kubernetes cluster, reached by port-forward.

It attaches to what ``scripts/e2e/kind.sh`` (``make e2e-kind``) made: a kind cluster from
``tests/e2e/kind/cluster.yaml`` with the images loaded and the chart installed with
``helm install --wait`` and ``tests/e2e/kind/values.yaml``. Each gate pod is reached through its
own ``kubectl port-forward`` on a port of 127.0.0.1 that kubectl chooses. Stopping a gate or a
node deletes its pod (the kubelet runs preStop, then SIGTERM) and its controller makes a new
one; logs are ``kubectl logs``; traces are read from the bundled OpenTelemetry Collector's
debug exporter.

Environment: ``GOVERSE_E2E_KUBE_CONTEXT`` (default ``kind-goverse-e2e``),
``GOVERSE_E2E_NAMESPACE`` and ``GOVERSE_E2E_RELEASE`` (default ``goverse`` both).
"""

from __future__ import annotations

import contextlib
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
    Component,
    ExportedSpan,
    StopResult,
    TargetError,
    serving,
    wait_until,
)
from tests.e2e.targets.chart import HELM, TOOLS

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


class KindTarget:
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
        self._pre_stop = 0.0
        self._gate_port = 0
        self.stop_bound = EXIT_BOUND

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
        configmap = statefulset["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]
        data = self._get("configmap", configmap["configMapRef"]["name"])["data"]
        self._node_list = str(data["GOVERSE_NODES"]).split(",")
        deployment = self._get("deployment", f"--selector={self._selector('gate')}")["items"][0]
        gate_container = deployment["spec"]["template"]["spec"]["containers"][0]
        ports = {port.get("name"): port["containerPort"] for port in gate_container["ports"]}
        self._gate_port = int(ports["grpc"])
        pre_stop = gate_container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
        command = pre_stop.get("command", [])
        if len(command) == 2 and command[0] == "sleep":
            self._pre_stop = float(command[1])
        self.stop_bound = EXIT_BOUND + self._pre_stop
        self._nodes = [pod["metadata"]["name"] for pod in self._live_pods("node")]
        self._gates = [pod["metadata"]["name"] for pod in self._live_pods("gate")]
        for gate in self._gates:
            self._forward(gate)

    def _forward(self, pod: str, local_port: int = 0) -> None:
        """``kubectl port-forward`` to the gate pod's gRPC port, on `local_port` of 127.0.0.1
        (0: one kubectl chooses, read from its "Forwarding from" line); waits until it
        answers."""
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
                    f"{local_port or ''}:{self._gate_port}",
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
            return serving(f"127.0.0.1:{port}", "goverse.v1.GateService")

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

    # -- the cluster ----------------------------------------------------------------------------

    def gate_addresses(self) -> list[str]:
        return [f"127.0.0.1:{self._forwards[pod][1]}" for pod in self._gates]

    def node_addresses(self) -> list[str]:
        return list(self._node_list)

    def instance_ids(self, component: Component) -> list[str]:
        if component == "gate":
            return list(self._gates)  # GOVERSE_GATE_ID is the pod name
        return list(self._node_list)  # node i advertises entry i

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
        return result

    def logs(self, component: Component, index: int) -> list[str]:
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
