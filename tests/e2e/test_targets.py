"""The e2e targets' own logic, without Docker or Kubernetes: the chart -> `docker run`
translation (scaled-out StatefulSet pods included), the collector log parser, and which
targets run secured."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.targets import TargetError, make_target
from tests.e2e.targets.chart import (
    CHART,
    HELM,
    TOOLS_PYTHON,
    Placement,
    UnsupportedSpec,
    docker_run_command,
    expand,
    helm_test_pods,
    quantity,
    render,
    service_dns_names,
    statefulset_pod,
    workload_pods,
)
from tests.e2e.targets.docker import (
    JWT_KEY,
    JWT_SECRET,
    SECURITY_VALUES,
    TLS_SECRETS,
    TOKEN_SECRET,
)
from tests.e2e.targets.kind import parse_debug_exporter


def addresses() -> Any:
    return (f"10.0.0.{n}" for n in itertools.count(10))


def test_expand_follows_kubernetes() -> None:
    env = {"POD_NAME": "node-0", "NS": "e2e"}
    assert expand("$(POD_NAME).svc.$(NS):7000", env) == "node-0.svc.e2e:7000"
    assert expand("$(MISSING)-x", env) == "$(MISSING)-x"
    assert expand("$$(POD_NAME) costs $$5", env) == "$(POD_NAME) costs $5"


@pytest.mark.parametrize(
    ("text", "value"),
    [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("250m", 0.25), ("2", 2), ("1G", 10**9), (3, 3)],
)
def test_quantity(text: str | int, value: float) -> None:
    assert quantity(text) == value


def _manifests(volume: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    labels = {"app": "x", "app.kubernetes.io/component": "node"}
    return [
        {"kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"A": "from-map", "N": 3}},
        {
            "kind": "Service",
            "metadata": {"name": "x-headless"},
            "spec": {"clusterIP": "None", "selector": {"app": "x"}},
        },
        {
            "kind": "StatefulSet",
            "metadata": {"name": "x"},
            "spec": {
                "replicas": 2,
                "serviceName": "x-headless",
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 10,
                        "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 7},
                        "containers": [
                            {
                                "name": "c",
                                "image": "img:1",
                                "command": ["run", "--as=$(POD_NAME)"],
                                "args": ["--ip=$(IP)"],
                                "envFrom": [{"configMapRef": {"name": "cfg"}}],
                                "env": [
                                    {
                                        "name": "POD_NAME",
                                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                    },
                                    {
                                        "name": "IP",
                                        "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                                    },
                                    {
                                        "name": "MEM",
                                        "valueFrom": {
                                            "resourceFieldRef": {
                                                "resource": "limits.memory",
                                                "divisor": "1Mi",
                                            }
                                        },
                                    },
                                    {"name": "SELF", "value": "$(POD_NAME).x-headless:$(A)"},
                                ],
                                "ports": [{"name": "grpc", "containerPort": 7000}],
                                "readinessProbe": {"grpc": {"port": 7000, "service": "svc"}},
                                "resources": {"limits": {"memory": "64Mi"}},
                                "securityContext": {
                                    "readOnlyRootFilesystem": True,
                                    "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            }
                        ],
                        "volumes": [volume or {"name": "tmp", "emptyDir": {"sizeLimit": "1Mi"}}],
                    },
                },
            },
        },
    ]


def test_statefulset_pods_as_docker_runs() -> None:
    plans = workload_pods(_manifests(), Placement("e2e"), addresses())
    assert [plan.name for plan in plans] == ["x-0", "x-1"]
    plan = plans[1]
    assert plan.aliases == [
        "x-1.x-headless.e2e.svc.cluster.local",
        "x-headless.e2e.svc.cluster.local",
    ]
    assert plan.env["SELF"] == "x-1.x-headless:from-map"
    assert plan.env["N"] == "3"
    assert plan.env["IP"] == plan.ip == "10.0.0.11"
    assert plan.env["MEM"] == "64"
    assert plan.entrypoint == "run"
    assert plan.args == ["--as=x-1", "--ip=10.0.0.11"]
    assert plan.readiness is not None
    assert (plan.readiness.kind, plan.readiness.port, plan.readiness.service) == (
        "grpc",
        7000,
        "svc",
    )
    command = docker_run_command(plan, "c-x-1", "net", {"run": "r"}, [7000], {})
    joined = " ".join(command)
    for expected in [
        "--network net --ip 10.0.0.11 --hostname x-1",
        "--network-alias x-1.x-headless.e2e.svc.cluster.local",
        "--publish 127.0.0.1::7000",
        "--user 10001:10001 --group-add 7 --read-only",
        "--security-opt no-new-privileges --cap-drop ALL",
        f"--memory {64 * 2**20}",
        f"--tmpfs /tmp:rw,nosuid,nodev,mode=1777,size={2**20}",
        "--stop-timeout 10",
        "--label run=r",
        "--entrypoint run img:1 --as=x-1 --ip=10.0.0.11",
    ]:
        assert expected in joined
    assert command[-4:] == ["run", "img:1", "--as=x-1", "--ip=10.0.0.11"]


def test_what_docker_cannot_honour_is_refused() -> None:
    with pytest.raises(UnsupportedSpec, match="hostPath"):
        workload_pods(
            _manifests({"name": "tmp", "hostPath": {"path": "/"}}), Placement("e2e"), addresses()
        )
    manifests = _manifests()
    container = manifests[2]["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.phase"}}})
    with pytest.raises(UnsupportedSpec, match=r"status\.phase"):
        workload_pods(manifests, Placement("e2e"), addresses())


def test_secret_volumes_are_files_of_the_secrets_the_placement_has() -> None:
    """A ``secret`` volume mounts the keys it asks for from :attr:`Placement.secrets` as
    files, like a configMap volume; a Secret that does not exist is refused unless the
    volume is optional."""
    volume: dict[str, Any] = {
        "name": "tmp",
        "secret": {"secretName": "tls", "items": [{"key": "tls.crt", "path": "cert.pem"}]},
    }
    placement = Placement("e2e", secrets={"tls": {"tls.crt": "PEM", "tls.key": "KEY"}})
    plan = workload_pods(_manifests(volume), placement, addresses())[0]
    assert plan.files == {"/tmp": {"cert.pem": "PEM"}}
    assert not any(option.startswith("/tmp") for option in plan.options)
    with pytest.raises(UnsupportedSpec, match="secret volume tls does not exist"):
        workload_pods(_manifests(volume), Placement("e2e"), addresses())
    volume["secret"]["optional"] = True
    assert workload_pods(_manifests(volume), Placement("e2e"), addresses())[0].files == {"/tmp": {}}


def test_a_statefulset_scaled_out_makes_the_next_ordinal_from_its_template() -> None:
    """Scaling out: pod `x-3` from the same template, its name in aliases and environment;
    pods made all at once only (Parallel), OrderedReady is refused."""
    manifests = _manifests()
    with pytest.raises(UnsupportedSpec, match="OrderedReady"):
        statefulset_pod(manifests, "node", 3, Placement("e2e"), "10.0.0.99")
    manifests[2]["spec"]["podManagementPolicy"] = "Parallel"
    plan = statefulset_pod(manifests, "node", 3, Placement("e2e"), "10.0.0.99")
    assert (plan.name, plan.hostname, plan.ip) == ("x-3", "x-3", "10.0.0.99")
    assert plan.aliases[0] == "x-3.x-headless.e2e.svc.cluster.local"
    assert plan.env["SELF"] == "x-3.x-headless:from-map"
    assert plan.args == ["--as=x-3", "--ip=10.0.0.99"]


# The values the docker target renders with: the chart's defaults and the demo objects (plus,
# secured, its SECURITY_VALUES).
DEFAULT_VALUES = [f"--values={CHART / 'ci' / 'default-values.yaml'}"]


@pytest.mark.skipif(
    not (HELM.exists() and TOOLS_PYTHON.exists()), reason="chart tools not installed"
)
def test_the_charts_etcd_nodes_advertise_their_pod_dns_names() -> None:
    """With membership etcd and an external endpoint: no node list, and a scaled-out node
    advertises its own stable DNS name (its node id in etcd), which is its first alias."""
    resources = render(
        "goverse",
        "e2e",
        [
            *DEFAULT_VALUES,
            "--set=membership=etcd",
            '--set-json=etcd.endpoints=["etcd.e2e.svc.cluster.local:2379"]',
        ],
    )
    plans = workload_pods(resources, Placement("e2e"), addresses())
    assert all("GOVERSE_NODES" not in plan.env for plan in plans)
    assert {plan.env["GOVERSE_ETCD_ENDPOINTS"] for plan in plans} == {
        "etcd.e2e.svc.cluster.local:2379"
    }
    plan = statefulset_pod(resources, "node", 3, Placement("e2e"), "10.0.0.99")
    assert plan.name == "goverse-node-3"
    host = "goverse-node-3.goverse-node-headless.e2e.svc.cluster.local"
    assert plan.env["GOVERSE_ADVERTISE"] == f"{host}:7000"
    assert plan.aliases[0] == host


@pytest.mark.skipif(
    not (HELM.exists() and TOOLS_PYTHON.exists()), reason="chart tools not installed"
)
def test_the_charts_defaults_plan_two_nodes_and_two_gates_wired_together() -> None:
    """The docker target's reading of the real chart: node DNS names are the node list."""
    resources = render("goverse", "e2e", DEFAULT_VALUES)
    plans = workload_pods(resources, Placement("e2e"), addresses())
    nodes = [plan for plan in plans if plan.component == "node"]
    gates = [plan for plan in plans if plan.component == "gate"]
    assert (len(nodes), len(gates)) == (2, 2)
    node_list = nodes[0].env["GOVERSE_NODES"].split(",")
    for index, plan in enumerate(nodes):
        assert plan.env["GOVERSE_ADVERTISE"] == node_list[index]
        assert plan.aliases[0] == node_list[index].rsplit(":", 1)[0]
        assert plan.env["GOVERSE_NODES"] == gates[0].env["GOVERSE_NODES"]
    for plan in gates:
        assert plan.env["GOVERSE_GATE_ID"] == plan.name
        assert "goverse-gate.e2e.svc.cluster.local" in plan.aliases
    for plan in plans:
        assert {"--read-only", "no-new-privileges", "ALL"} <= set(plan.options)
        assert plan.ports["grpc"] in {7000, 7100}
    (test_pod,) = helm_test_pods(resources, Placement("e2e"), addresses())
    assert test_pod.run_to_completion


@pytest.mark.skipif(
    not (HELM.exists() and TOOLS_PYTHON.exists()), reason="chart tools not installed"
)
def test_the_secured_chart_mounts_the_docker_targets_secrets_and_probes_health() -> None:
    """Rendered with the docker target's security values, the pods mount its TLS and JWT
    Secrets, probe readiness on the published plaintext health port, and are reached by the
    DNS names its certificates are made for."""
    placement = Placement(
        "e2e",
        secrets={
            **{
                name: {"tls.crt": "C", "tls.key": "K", "ca.crt": "CA"}
                for name in TLS_SECRETS.values()
            },
            JWT_SECRET: {JWT_KEY: "hs"},
            TOKEN_SECRET: {"token": "T"},
        },
    )
    resources = render("goverse", "e2e", [*DEFAULT_VALUES, *SECURITY_VALUES])
    plans = workload_pods(resources, placement, addresses())
    for plan in plans:
        tls_dir = str(Path(plan.env["GOVERSE_TLS_CERT"]).parent)
        assert plan.files[tls_dir] == {"tls.crt": "C", "tls.key": "K", "ca.crt": "CA"}
        assert plan.readiness is not None
        assert plan.readiness.port == plan.ports["health"] != plan.ports["grpc"]
    gate = next(plan for plan in plans if plan.component == "gate")
    secret_file = Path(gate.env["GOVERSE_JWT_SECRET_FILE"])
    assert gate.files[str(secret_file.parent)] == {secret_file.name: "hs"}
    (test_pod,) = helm_test_pods(resources, placement, addresses())
    assert {"token": "T"} in test_pod.files.values()
    assert service_dns_names(resources, "node", placement) == [
        "*.goverse-node-headless.e2e.svc.cluster.local",
        "goverse-node-headless.e2e.svc.cluster.local",
    ]
    assert "goverse-gate.e2e.svc.cluster.local" in service_dns_names(resources, "gate", placement)


DEBUG_EXPORTER = """\
2025-03-01T10:00:00.000Z\tinfo\tTraces\t{"kind": "exporter", "resource spans": 2, "spans": 2}
2025-03-01T10:00:00.000Z\tinfo\tResourceSpans #0
Resource SchemaURL: https://opentelemetry.io/schemas/1.11.0
Resource attributes:
     -> service.name: Str(goverse-gate)
     -> k8s.pod.name: Str(goverse-gate-abc-de)
ScopeSpans #0
ScopeSpans SchemaURL:
InstrumentationScope opentelemetry.instrumentation.grpc 0.66b2
Span #0
    Trace ID       : 4bf92f3577b34da6a3ce929d0e0e4736
    Parent ID      :
    ID             : 00f067aa0ba902b7
    Name           : /goverse.v1.GateService/CallObject
    Kind           : Server
Attributes:
     -> rpc.system: Str(grpc)
ResourceSpans #1
Resource attributes:
     -> service.name: Str(goverse-node)
ScopeSpans #0
Span #0
    Trace ID       : 4bf92f3577b34da6a3ce929d0e0e4736
    Parent ID      : 00f067aa0ba902b7
    ID             : 1111111111111111
    Name           : Counter.Increment
Links:
SpanLink #0
     Trace ID       : ffffffffffffffffffffffffffffffff
     ID             : 2222222222222222
\t{"kind": "exporter", "data_type": "traces", "name": "debug"}
"""


def test_parse_debug_exporter() -> None:
    gate, node = parse_debug_exporter(DEBUG_EXPORTER)
    assert (gate.service, gate.name, gate.trace_id, gate.span_id, gate.parent_span_id) == (
        "goverse-gate",
        "/goverse.v1.GateService/CallObject",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
        "",
    )
    assert gate.resource["k8s.pod.name"] == "goverse-gate-abc-de"
    assert (node.service, node.name, node.trace_id, node.parent_span_id) == (
        "goverse-node",
        "Counter.Increment",
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "00f067aa0ba902b7",
    )
    assert node.span_id == "1111111111111111"


@pytest.mark.parametrize("name", ["local", "docker"])
def test_the_local_and_docker_targets_run_secured_unless_told_otherwise(
    name: str, tmp_path: Path
) -> None:
    """`--security` unset: the target is secured (TLS + JWT); off: plaintext, and its
    clients and channels carry no credentials. Nothing starts."""
    assert make_target(name, tmp_path / "default").secured
    plaintext = make_target(name, tmp_path / "off", secured=False)
    assert not plaintext.secured
    assert plaintext.client_options() == {}
    assert plaintext.node_credentials() is None


def test_the_kind_target_runs_plaintext_only_and_refuses_to_run_secured(tmp_path: Path) -> None:
    """The kind target runs plaintext by default and refuses `--security on` rather than run
    plaintext under that name."""
    assert not make_target("kind", tmp_path).secured
    with pytest.raises(TargetError, match="--security off"):
        make_target("kind", tmp_path, secured=True)
