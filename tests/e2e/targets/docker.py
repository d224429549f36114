"""The docker target: the images, run as the chart's `helm template` output says.

One user-defined Docker network per run (``goverse-e2e-<run>``), its subnet fixed so pods get
the IP the downward API reports; one container per pod (``gve2e-<run>-<pod>``), with the node
and Service DNS names the chart computes as network aliases (chart.py says what is emulated).
Every container port is published on a port of 127.0.0.1 that Docker chooses (read back with
``docker port``, again after a restart), so the test process reaches the gates (and the probes
reach everyone) on loopback only. Traces go to an OTLP receiver in
the test process bound to the network's gateway address, set with the chart's
``tracing.otlpEndpoint`` value.

Everything made is labelled ``io.goverse.e2e.run=<run>`` and removed by :meth:`close` (also
at interpreter exit); ``scripts/e2e/docker-clean.sh`` removes what a killed run left.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import ipaddress
import itertools
import json
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
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
from tests.e2e.targets.chart import (
    CHART,
    PodPlan,
    Probe,
    docker_run_command,
    helm_test_pods,
    render,
    workload_pods,
)
from tests.e2e.targets.chart import Placement as PodPlacement
from tests.e2e.targets.otlp import OtlpReceiver, receiver_unavailable

RELEASE = "goverse"
NAMESPACE = "e2e"
# The chart's CI scenario of its defaults: 2 nodes, 2 gates.
VALUES = [CHART / "ci" / "default-values.yaml"]
# Containers start Python, grpc and protobuf on a loaded 2-core machine.
READY_TIMEOUT = 60.0
RUN_LABEL = "io.goverse.e2e.run"


def docker(*args: str, timeout: float = 60.0, check: bool = True) -> str:
    """Runs the docker CLI; returns stdout; raises TargetError with stderr when it fails."""
    try:
        done = subprocess.run(
            ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise TargetError("the docker CLI is not installed (scripts/docker/engine.sh)") from None
    if check and done.returncode != 0:
        raise TargetError(f"docker {' '.join(args[:3])} failed: {done.stderr.strip()}")
    return done.stdout


def _probe_ok(probe: Probe, host_port: int) -> bool:
    address = f"127.0.0.1:{host_port}"
    if probe.kind == "grpc":
        return serving(address, probe.service)
    if probe.kind == "tcp":
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", host_port), 1):
            return True
        return False
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(f"http://{address}{probe.path}", timeout=1) as reply,
    ):
        return 200 <= int(reply.status) < 400
    return False


def finished_at(stamp: str) -> float | None:
    """Docker's ``State.FinishedAt`` (RFC 3339 with nanoseconds, UTC) as a Unix time."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", stamp)
    if not match or stamp.startswith("0001-"):
        return None
    whole = datetime.datetime.fromisoformat(match.group(1)).replace(tzinfo=datetime.UTC)
    return whole.timestamp() + float(f"0.{match.group(2) or 0}")


class DockerTarget:
    """2 nodes and 2 gates as containers made from the rendered chart."""

    name = "docker"
    # `docker stop` sends SIGTERM at once: no preStop sleep to add (that is Kubernetes').
    stop_bound = EXIT_BOUND

    def __init__(self, workdir: Path, helm_args: Sequence[str] = ()) -> None:
        self.run_id = secrets.token_hex(4)
        self.network = f"goverse-e2e-{self.run_id}"
        self._workdir = workdir
        self._helm_args = list(helm_args)
        self._labels = {"io.goverse.e2e": "1", RUN_LABEL: self.run_id}
        self._receiver: OtlpReceiver | None = None
        self._plans: list[PodPlan] = []
        self._tests: list[PodPlan] = []
        self._published: dict[str, dict[int, int]] = {}
        self._mounts: dict[str, dict[str, Path]] = {}
        self._network_made = False
        self._closed = False
        atexit.register(self.close)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode:
            raise TargetError("no Docker engine answers: start one with scripts/docker/engine.sh")
        gateway, ips = self._make_network()
        helm_args = [*(f"--values={path}" for path in VALUES), *self._helm_args]
        if receiver_unavailable() is None:
            self._receiver = OtlpReceiver(gateway).start()
            quick_export = json.dumps([{"name": "OTEL_BSP_SCHEDULE_DELAY", "value": "200"}])
            helm_args += [
                f"--set=tracing.otlpEndpoint={self._receiver.endpoint}",
                f"--set-json=gate.extraEnv={quick_export}",
                f"--set-json=node.extraEnv={quick_export}",
            ]
        resources = render(RELEASE, NAMESPACE, helm_args)
        placement = PodPlacement(NAMESPACE, host_ip=gateway)
        self._plans = workload_pods(resources, placement, ips)
        self._tests = helm_test_pods(resources, placement, ips)
        for component in ("node", "gate"):
            if not self._of(component):
                raise TargetError(f"the chart rendered no {component} pods")
        for plan in [*self._plans, *self._tests]:
            self._check_image(plan)
        # Like `helm install`: every workload at once. Nodes first by a few hundred ms only.
        for plan in self._plans:
            self._run(plan)
        for plan in self._plans:
            self._wait_ready(plan)

    def _make_network(self) -> tuple[str, Iterator[str]]:
        """Creates the network with a subnet of its own (Docker picks a free one, then the
        network is made again with it fixed, which `docker run --ip` requires)."""
        labels = [f"--label={key}={value}" for key, value in self._labels.items()]
        docker("network", "create", *labels, self.network)
        self._network_made = True
        config = json.loads(docker("network", "inspect", self.network))[0]["IPAM"]["Config"][0]
        docker("network", "rm", self.network)
        docker(
            "network",
            "create",
            *labels,
            f"--subnet={config['Subnet']}",
            f"--gateway={config['Gateway']}",
            self.network,
        )
        gateway = str(config["Gateway"])
        # Pod IPs from the tenth address on (the gateway is the first).
        hosts = (str(ip) for ip in ipaddress.ip_network(config["Subnet"]).hosts())
        return gateway, (ip for ip in itertools.islice(hosts, 9, None) if ip != gateway)

    def _check_image(self, plan: PodPlan) -> None:
        found = docker(
            "image", "inspect", "--format={{json .Config.User}}", plan.image, check=False
        )
        if not found.strip():
            raise TargetError(f"image {plan.image} is missing: run `make images`")
        if plan.nonroot_from_image:
            user = json.loads(found).split(":")[0]
            if not user.isdigit() or user == "0":
                raise TargetError(f"{plan.image}: runAsNonRoot needs a numeric non-root USER")

    def _container(self, plan: PodPlan) -> str:
        return f"gve2e-{self.run_id}-{plan.name}"

    def _run(self, plan: PodPlan) -> None:
        mounts: dict[str, Path] = {}
        for path, files in plan.files.items():
            directory = Path(tempfile.mkdtemp(prefix=f"{plan.name}-", dir=self._workdir))
            directory.chmod(0o755)
            for file_name, content in files.items():
                (directory / file_name).write_text(content)
                (directory / file_name).chmod(0o644)
            mounts[path] = directory
        self._mounts[plan.name] = mounts
        command = docker_run_command(
            plan,
            self._container(plan),
            self.network,
            self._labels,
            plan.ports.values(),
            mounts,
        )
        docker(*command[1:])
        self._read_published(plan)

    def _read_published(self, plan: PodPlan) -> None:
        """Records the host ports Docker chose for the container's ports (on each start)."""
        published = {}
        for port in plan.ports.values():
            # One line per host address: "127.0.0.1:49153".
            lines = docker("port", self._container(plan), f"{port}/tcp").split()
            if not lines:
                raise TargetError(f"{plan.name}: Docker published no port for {port}")
            published[port] = int(lines[0].rpartition(":")[2])
        self._published[plan.name] = published

    def _state(self, plan: PodPlan) -> dict[str, Any]:
        out = docker("inspect", "--format={{json .State}}", self._container(plan), check=False)
        state: dict[str, Any] = json.loads(out) if out.strip() else {}
        return state

    def _wait_ready(self, plan: PodPlan) -> None:
        probe = plan.readiness
        if probe is None:
            return

        def ready() -> bool:
            state = self._state(plan)
            if not state.get("Running"):
                raise TargetError(
                    f"{plan.name} is not running ({state.get('Status')}, exit code "
                    f"{state.get('ExitCode')}):\n{self._logs(plan)[-5000:]}"
                )
            return _probe_ok(probe, self._published[plan.name][probe.port])

        wait_until(ready, READY_TIMEOUT, f"{plan.name} to be ready", interval=0.2)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            found = docker("ps", "--all", "--quiet", f"--filter=label={RUN_LABEL}={self.run_id}")
            if found.split():
                docker("rm", "--force", "--volumes", *found.split(), timeout=120, check=False)
        if self._network_made:
            docker("network", "rm", self.network, check=False)
        if self._receiver is not None:
            self._receiver.stop()
        for mounts in self._mounts.values():
            for directory in mounts.values():
                shutil.rmtree(directory, ignore_errors=True)

    # -- the cluster ----------------------------------------------------------------------------

    def _of(self, component: Component | str) -> list[PodPlan]:
        return [plan for plan in self._plans if plan.component == component]

    def _grpc_port(self, plan: PodPlan) -> int:
        if "grpc" not in plan.ports:
            raise TargetError(f"{plan.name} has no container port named grpc")
        return plan.ports["grpc"]

    def gate_addresses(self) -> list[str]:
        return [
            f"127.0.0.1:{self._published[plan.name][self._grpc_port(plan)]}"
            for plan in self._of("gate")
        ]

    def node_addresses(self) -> list[str]:
        return self._of("node")[0].env["GOVERSE_NODES"].split(",")

    def instance_ids(self, component: Component) -> list[str]:
        key = "GOVERSE_GATE_ID" if component == "gate" else "GOVERSE_ADVERTISE"
        return [plan.env[key] for plan in self._of(component)]

    def _stop(self, plan: PodPlan) -> StopResult:
        started, wall = time.monotonic(), time.time()
        docker("stop", f"--time={plan.stop_timeout}", self._container(plan), timeout=120)
        seconds = time.monotonic() - started
        state = self._state(plan)
        finished = finished_at(str(state.get("FinishedAt", "")))
        recorded = None if finished is None else finished - wall
        return StopResult(seconds, state.get("ExitCode"), recorded)

    def _start_again(self, plan: PodPlan) -> None:
        docker("start", self._container(plan))
        self._read_published(plan)  # Docker may choose other host ports this time
        self._wait_ready(plan)

    def stop_gate(self, index: int) -> StopResult:
        return self._stop(self._of("gate")[index])

    def start_gate(self, index: int) -> None:
        plan = self._of("gate")[index]
        if not self._state(plan).get("Running"):
            self._start_again(plan)

    def restart_node(self, index: int) -> StopResult:
        plan = self._of("node")[index]
        result = self._stop(plan)
        self._start_again(plan)
        return result

    def _logs(self, plan: PodPlan) -> str:
        done = subprocess.run(
            ["docker", "logs", self._container(plan)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.stdout + done.stderr

    def logs(self, component: Component, index: int) -> list[str]:
        return self._logs(self._of(component)[index]).splitlines()

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
        """Runs each `helm test` pod to completion, like `helm test` (first failure wins)."""
        outputs = []
        for plan in self._tests:
            self._run(plan)
            code = int(docker("wait", self._container(plan), timeout=180).strip() or 1)
            outputs.append(f"----- {plan.name} (exit {code}) -----\n{self._logs(plan)}")
            docker("rm", "--force", self._container(plan), check=False)
            if code != 0:
                return code, "\n".join(outputs)
        return 0, "\n".join(outputs)

    def diagnostics(self) -> str:
        parts = [docker("ps", "--all", f"--filter=label={RUN_LABEL}={self.run_id}", check=False)]
        for plan in self._plans:
            state = self._state(plan)
            parts.append(
                f"----- {plan.name} ({self._container(plan)}: {state.get('Status')}, exit "
                f"{state.get('ExitCode')}, OOM {state.get('OOMKilled')}) -----\n"
                f"{self._logs(plan)[-20000:]}"
            )
        return "\n".join(parts)
