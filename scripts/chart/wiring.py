"""Checks that rendered manifests wire goverse together: node list, advertise, probes, budget.

    build/tools/venv/bin/python scripts/chart/wiring.py FILE...

For each file (one `helm template` output): the gate and node ConfigMaps carry the same
GOVERSE_NODES; it names every node pod
`<statefulset>-<i>.<headless service>.<ns>.svc.<domain>:<port>`
for i < replicas, and each pod's GOVERSE_ADVERTISE, with its name filled in, is its entry;
the headless Service publishes not-ready addresses; gate ids come from the pod name; gRPC
probes hit the container's gRPC port; terminationGracePeriodSeconds covers preStop + shutdown;
GOVERSE_METRICS_PORT is the `metrics` container port, or `off` without one.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # in build/tools/venv

Resource = dict[str, Any]


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", duration)
    if not match:
        raise ValueError(f"not a duration: {duration!r}")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value * (60 if match.group(2) == "m" else 1)


def _one(resources: list[Resource], kind: str, component: str) -> Resource:
    found = [
        r
        for r in resources
        if r["kind"] == kind
        and r["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
        and not r["metadata"].get("name", "").endswith("-metrics")
    ]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} of component {component}, found {len(found)}")
    return found[0]


def _container(workload: Resource) -> Resource:
    containers: list[Resource] = workload["spec"]["template"]["spec"]["containers"]
    return containers[0]


def _env(container: Resource) -> dict[str, Resource]:
    return {item["name"]: item for item in container.get("env", [])}


def check(resources: list[Resource]) -> list[str]:
    problems: list[str] = []

    def expect(condition: bool, message: str) -> None:
        if not condition:
            problems.append(message)

    node_cm = _one(resources, "ConfigMap", "node")["data"]
    gate_cm = _one(resources, "ConfigMap", "gate")["data"]
    sts = _one(resources, "StatefulSet", "node")
    gate = _one(resources, "Deployment", "gate")
    headless = next(
        r
        for r in resources
        if r["kind"] == "Service" and r["metadata"]["name"] == sts["spec"]["serviceName"]
    )

    expect(
        node_cm["GOVERSE_NODES"] == gate_cm["GOVERSE_NODES"],
        "gates and nodes get different node lists",
    )
    expect(headless["spec"].get("clusterIP") == "None", "the node Service is not headless")
    expect(
        headless["spec"].get("publishNotReadyAddresses") is True,
        "publishNotReadyAddresses is not true",
    )

    node_container = _container(sts)
    node_port = next(p["containerPort"] for p in node_container["ports"] if p["name"] == "grpc")
    nodes = node_cm["GOVERSE_NODES"].split(",")
    expect(
        len(nodes) == sts["spec"]["replicas"],
        f"{len(nodes)} nodes listed for {sts['spec']['replicas']} replicas",
    )
    expect(
        node_cm["GOVERSE_LISTEN"] == f"0.0.0.0:{node_port}",
        "node --listen is not the gRPC container port",
    )
    advertise = _env(node_container)["GOVERSE_ADVERTISE"]["value"]
    expect("$(POD_NAME)" in advertise, "GOVERSE_ADVERTISE is not built from the pod name")
    expect(
        _env(node_container)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name",
        "POD_NAME is not the pod name",
    )
    for i in range(sts["spec"]["replicas"]):
        pod = f"{sts['metadata']['name']}-{i}"
        mine = advertise.replace("$(POD_NAME)", pod)
        expect(mine in nodes, f"node pod {pod} advertises {mine}, which is not in the node list")
        expect(
            mine.startswith(
                f"{pod}.{headless['metadata']['name']}.{sts['metadata']['namespace']}.svc."
            ),
            f"{mine} is not the stable DNS name of {pod}",
        )
        expect(len(pod) <= 63, f"pod name {pod} is longer than a DNS label")

    gate_container = _container(gate)
    gate_env = _env(gate_container)
    expect(
        gate_env["GOVERSE_GATE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name",
        "the gate id is not the pod name",
    )
    gate_port = next(p["containerPort"] for p in gate_container["ports"] if p["name"] == "grpc")
    expect(
        gate_cm["GOVERSE_LISTEN"] == f"0.0.0.0:{gate_port}",
        "gate --listen is not the gRPC container port",
    )

    for workload, container, cm, service in (
        (sts, node_container, node_cm, "goverse.v1.NodeService"),
        (gate, gate_container, gate_cm, "goverse.v1.GateService"),
    ):
        name = workload["metadata"]["name"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        readiness = container["readinessProbe"].get("grpc", {})
        liveness = container["livenessProbe"].get("grpc", {})
        expect(readiness.get("port") == port, f"{name}: readiness probe is not gRPC on port {port}")
        expect(
            readiness.get("service") == service, f"{name}: readiness probe does not check {service}"
        )
        expect(liveness.get("port") == port, f"{name}: liveness probe is not gRPC on port {port}")
        pre_stop = 0.0
        hook = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        if hook:
            expect(hook[0] == "sleep", f"{name}: preStop is not a sleep")
            pre_stop = float(hook[1])
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        budget = _seconds(cm["GOVERSE_SHUTDOWN_TIMEOUT"])
        expect(
            grace >= pre_stop + budget + 2,
            f"{name}: grace {grace}s < preStop {pre_stop}s + shutdown {budget}s + 2s",
        )
        metrics = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
        # `off` disables the endpoint; 0 would bind a port nobody knows.
        expect(
            cm["GOVERSE_METRICS_PORT"] == (str(metrics[0]) if metrics else "off"),
            f"{name}: GOVERSE_METRICS_PORT={cm['GOVERSE_METRICS_PORT']} but metrics ports "
            f"{metrics or 'none'}",
        )
        expect(
            "checksum/config" in workload["spec"]["template"]["metadata"].get("annotations", {}),
            f"{name}: no checksum/config annotation",
        )
        expect(
            any(ref.get("configMapRef") for ref in container.get("envFrom", [])),
            f"{name}: the ConfigMap is not consumed through envFrom",
        )
    return problems


def main() -> int:
    failures = 0
    for path in sys.argv[1:]:
        with open(path) as f:
            resources = [doc for doc in yaml.safe_load_all(f) if doc]
        problems = check(resources)
        for problem in problems:
            print(f"FAIL {path}: {problem}")
        failures += len(problems)
    print(f"wiring of {len(sys.argv) - 1} rendering(s): {failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
