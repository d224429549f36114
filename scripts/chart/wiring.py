"""Checks that rendered manifests wire goverse together: membership, advertise, probes, budget.

    build/tools/venv/bin/python scripts/chart/wiring.py FILE...

For each file (one `helm template` output):

- static membership: the gate and node ConfigMaps carry the same GOVERSE_NODES; it names every
  node pod `<statefulset>-<i>.<headless service>.<ns>.svc.<domain>:<port>` for i < replicas,
  and each pod's GOVERSE_ADVERTISE, with its name filled in, is its entry; no node autoscaler;
- etcd membership: no GOVERSE_NODES anywhere; both ConfigMaps carry the same
  GOVERSE_ETCD_ENDPOINTS and GOVERSE_ETCD_PREFIX; GOVERSE_ADVERTISE is the pod's stable DNS
  name; with the bundled etcd, the endpoints are its client Service, and the members' URLs,
  --initial-cluster, ports, probes, volume and NetworkPolicy agree with each other;
- both: the node headless Service publishes not-ready addresses; gate ids come from the pod
  name; gRPC probes hit the container's gRPC port (readiness: the service name, liveness and
  startup: the overall status ""); terminationGracePeriodSeconds covers preStop + shutdown,
  and with etcd the leave share of the node's shutdown budget covers the handoff timeout;
  GOVERSE_METRICS_PORT is the `metrics` container port, or `off` without one; an autoscaled
  workload has no replica count of its own and CPU requests; every PodDisruptionBudget
  selects the pods of a workload;
- egress (when a gate or node NetworkPolicy restricts it): DNS, the nodes' gRPC port, etcd (the
  bundled members' client port, or every endpoint's port), the PostgreSQL store's port from
  nodes, the OTLP endpoint's port (or the bundled collector);
- an Ingress or GRPCRoute of the gate: to the gate Service's grpc port (the HTTP/JSON
  Ingress: its http port), TLS for every host;
- security: with TLS the probes use the health container port, GOVERSE_HEALTH_PORT; every
  TLS, JWT and access-rules file is a key of a read-only mounted Secret (ConfigMap for the
  rules, whose checksum is on the pod), never with subPath; no Secret in the env but the
  store URL; Certificates: one URI SAN spiffe://<domain>/<role>/<name>, server and client
  auth, their Secret mounted by that role's pods; the health port open in the NetworkPolicies;
  metrics listen on 0.0.0.0;
- the store: GOVERSE_STORE either in the node ConfigMap, without a password, or in the env from
  a Secret, not both; sqlite: only for one node with static membership; with
  GOVERSE_STORE_PASSWORD_FILE, that path is the one key of a Secret volume mounted read-only,
  readable by the node's user; no password anywhere in the ConfigMap or the environment (no
  literal, and no secretKeyRef to the password Secret).
"""

from __future__ import annotations

import re
import sys
from typing import Any
from urllib.parse import urlsplit

import yaml  # type: ignore[import-untyped, unused-ignore]  # in build/tools/venv

Resource = dict[str, Any]

# The node's own --handoff-timeout default, for a rendering that does not set it, and the share
# of its shutdown budget a stopping node gets to hand its shards off (LEAVE_SHARE in
# goverse.server._service): the chart's `goverse.nodeDefault.handoffTimeout` and
# `goverse.node.leaveShare` (tests/unit/test_chart_settings.py checks all four against the code).
DEFAULT_HANDOFF_TIMEOUT = "5s"
LEAVE_SHARE = 0.6

# A password in a store URL: user:password@ in the authority, or libpq's password= option.
_URL_PASSWORD = re.compile(r"^[A-Za-z]+://[^/@]*:[^/@]*@|[?&]password=")
# A secret volume's files without a defaultMode (Kubernetes' default).
_DEFAULT_SECRET_MODE = 0o644


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", duration)
    if not match:
        raise ValueError(f"not a duration: {duration!r}")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value * (60 if match.group(2) == "m" else 1)


def _component(resource: Resource) -> str | None:
    labels: dict[str, str] = resource["metadata"].get("labels", {})
    return labels.get("app.kubernetes.io/component")


def _all(resources: list[Resource], kind: str, component: str) -> list[Resource]:
    return [
        r
        for r in resources
        if r["kind"] == kind
        and _component(r) == component
        and not r["metadata"].get("name", "").endswith("-metrics")
    ]


def _one(resources: list[Resource], kind: str, component: str) -> Resource:
    found = _all(resources, kind, component)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} of component {component}, found {len(found)}")
    return found[0]


def _container(workload: Resource) -> Resource:
    containers: list[Resource] = workload["spec"]["template"]["spec"]["containers"]
    return containers[0]


def _env(container: Resource) -> dict[str, Resource]:
    return {item["name"]: item for item in container.get("env", [])}


def _env_value(container: Resource, name: str) -> str:
    return str(_env(container).get(name, {}).get("value", ""))


def _port(container: Resource, name: str) -> int | None:
    return next((p["containerPort"] for p in container["ports"] if p["name"] == name), None)


def _service(resources: list[Resource], name: str) -> Resource | None:
    return next(
        (r for r in resources if r["kind"] == "Service" and r["metadata"]["name"] == name), None
    )


def _selects(selector: dict[str, str], workload: Resource) -> bool:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"].get("labels", {})
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class Checker:
    """Collects the problems of one rendering."""

    def __init__(self, resources: list[Resource]) -> None:
        self.resources = resources
        self.problems: list[str] = []

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            self.problems.append(message)

    def check(self) -> list[str]:
        resources = self.resources
        node_cm = _one(resources, "ConfigMap", "node")["data"]
        gate_cm = _one(resources, "ConfigMap", "gate")["data"]
        sts = _one(resources, "StatefulSet", "node")
        gate = _one(resources, "Deployment", "gate")
        headless = _service(resources, sts["spec"]["serviceName"])
        if headless is None:
            return [f"no Service {sts['spec']['serviceName']} for the node StatefulSet"]

        self.expect(headless["spec"].get("clusterIP") == "None", "the node Service is not headless")
        self.expect(
            headless["spec"].get("publishNotReadyAddresses") is True,
            "publishNotReadyAddresses is not true",
        )
        node_container = _container(sts)
        node_port = _port(node_container, "grpc")
        self.expect(
            node_cm["GOVERSE_LISTEN"] == f"0.0.0.0:{node_port}",
            "node --listen is not the gRPC container port",
        )
        advertise = _env_value(node_container, "GOVERSE_ADVERTISE")
        self.expect("$(POD_NAME)" in advertise, "GOVERSE_ADVERTISE is not built from the pod name")
        self.expect(
            _env(node_container)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.name",
            "POD_NAME is not the pod name",
        )
        replicas = sts["spec"].get("replicas")
        # An autoscaled StatefulSet has no count: check the names of its first pods.
        for i in range(replicas if replicas is not None else 3):
            pod = f"{sts['metadata']['name']}-{i}"
            mine = advertise.replace("$(POD_NAME)", pod)
            self.expect(
                mine.startswith(
                    f"{pod}.{headless['metadata']['name']}.{sts['metadata']['namespace']}.svc."
                )
                and mine.endswith(f":{node_port}"),
                f"{mine} is not the stable DNS name and gRPC port of {pod}",
            )
            self.expect(len(pod) <= 63, f"pod name {pod} is longer than a DNS label")

        if "GOVERSE_ETCD_ENDPOINTS" in node_cm or "GOVERSE_ETCD_ENDPOINTS" in gate_cm:
            self.check_etcd_membership(node_cm, gate_cm)
        else:
            self.check_static_membership(node_cm, gate_cm, sts, advertise)

        gate_container = _container(gate)
        self.expect(
            _env(gate_container)["GOVERSE_GATE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.name",
            "the gate id is not the pod name",
        )
        self.expect(
            gate_cm["GOVERSE_LISTEN"] == f"0.0.0.0:{_port(gate_container, 'grpc')}",
            "gate --listen is not the gRPC container port",
        )
        for workload, cm, service in (
            (sts, node_cm, "goverse.v1.NodeService"),
            (gate, gate_cm, "goverse.v1.GateService"),
        ):
            self.check_service_pod(workload, cm, service)
        if "GOVERSE_ETCD_ENDPOINTS" in node_cm:
            handoff = _seconds(node_cm.get("GOVERSE_HANDOFF_TIMEOUT", DEFAULT_HANDOFF_TIMEOUT))
            budget = _seconds(node_cm["GOVERSE_SHUTDOWN_TIMEOUT"])
            self.expect(
                budget * LEAVE_SHARE >= handoff,
                f"node shutdown budget {budget}s: its leave share ({LEAVE_SHARE:.0%}) does not "
                f"cover the handoff timeout {handoff}s",
            )
        self.check_store(node_cm, sts)
        for component, cm in (("node", node_cm), ("gate", gate_cm)):
            for policy in _all(resources, "NetworkPolicy", component):
                if "Egress" in policy["spec"].get("policyTypes", []):
                    self.check_egress(policy, component, cm, node_port)
        self.check_autoscalers()
        self.check_disruption_budgets()
        self.check_gate_routes(gate)
        self.check_certificates(gate_cm)
        for component, cm in (("node", node_cm), ("gate", gate_cm)):
            if "GOVERSE_METRICS_PORT" in cm and cm["GOVERSE_METRICS_PORT"] != "off":
                self.expect(
                    cm.get("GOVERSE_METRICS_HOST") == "0.0.0.0",
                    f"the {component} metrics endpoint does not listen on 0.0.0.0, where "
                    "Prometheus scrapes the pod IP",
                )
        return self.problems

    def check_certificates(self, gate_cm: dict[str, str]) -> None:
        """cert-manager Certificates of the roles: one URI SAN spiffe://.../gate|node/NAME each,
        server and client auth, and written to the Secret the pods of that role mount."""
        for cert in (r for r in self.resources if r["kind"] == "Certificate"):
            name = cert["metadata"]["name"]
            spec = cert["spec"]
            role = _component(cert)
            if name.endswith("-client"):
                self.expect(
                    "GOVERSE_CLIENT_TLS_CERT" in gate_cm,
                    f"Certificate {name}: the gate has no --client-tls-cert",
                )
                continue
            uris = spec.get("uris", [])
            self.expect(
                len(uris) == 1
                and re.fullmatch(rf"spiffe://[^/]+/{role}/[^/]+", uris[0]) is not None,
                f"Certificate {name}: URI SANs {uris} are not one spiffe://<domain>/{role}/<name>",
            )
            self.expect(
                {"server auth", "client auth"} <= set(spec.get("usages", [])),
                f"Certificate {name}: not for both server and client auth",
            )
            kind = "StatefulSet" if role == "node" else "Deployment"
            mounted = {
                (v.get("secret") or {}).get("secretName")
                for w in _all(self.resources, kind, role or "")
                for v in w["spec"]["template"]["spec"].get("volumes", [])
            }
            self.expect(
                spec["secretName"] in mounted,
                f"Certificate {name}: its Secret {spec['secretName']} is not mounted by the "
                f"{role} pods",
            )

    def check_gate_routes(self, gate: Resource) -> None:
        """An Ingress or GRPCRoute of the gate sends to the client Service's gRPC port (the
        HTTP/JSON Ingress to its http port), with TLS for every host of an Ingress."""
        service = _service(self.resources, gate["metadata"]["name"])
        if service is None:
            self.problems.append("no client Service of the gate")
            return
        ports = service["spec"]["ports"]
        for ingress in _all(self.resources, "Ingress", "gate"):
            name = ingress["metadata"]["name"]
            hosts = {rule.get("host") for rule in ingress["spec"].get("rules", [])}
            covered = {h for tls in ingress["spec"].get("tls", []) for h in tls.get("hosts", [])}
            self.expect(hosts <= covered, f"Ingress {name}: hosts without TLS: {hosts - covered}")
            # The HTTP/JSON Ingress (named <gate>-http) goes to the http port, the other to grpc.
            port = "http" if name.endswith("-http") else "grpc"
            for rule in ingress["spec"].get("rules", []):
                for path in rule["http"]["paths"]:
                    backend = path["backend"]["service"]
                    self.expect(
                        backend["name"] == service["metadata"]["name"]
                        and backend["port"].get("name") == port
                        and any(p["name"] == port for p in ports),
                        f"Ingress {name}: {backend} is not the gate Service's {port} port",
                    )
        for route in _all(self.resources, "GRPCRoute", "gate"):
            for rule in route["spec"]["rules"]:
                for ref in rule["backendRefs"]:
                    self.expect(
                        ref["name"] == service["metadata"]["name"]
                        and ref["port"] in {p["port"] for p in ports if p["name"] == "grpc"},
                        f"GRPCRoute {route['metadata']['name']}: {ref} is not the gate "
                        "Service's grpc port",
                    )

    def check_static_membership(
        self, node_cm: dict[str, str], gate_cm: dict[str, str], sts: Resource, advertise: str
    ) -> None:
        for name, cm in (("node", node_cm), ("gate", gate_cm)):
            self.expect("GOVERSE_NODES" in cm, f"static membership: the {name} has no node list")
            self.expect(
                not any(key.startswith("GOVERSE_ETCD_") for key in cm),
                f"static membership: the {name} ConfigMap has etcd settings",
            )
        self.expect(
            node_cm.get("GOVERSE_NODES") == gate_cm.get("GOVERSE_NODES"),
            "gates and nodes get different node lists",
        )
        nodes = node_cm.get("GOVERSE_NODES", "").split(",")
        replicas = sts["spec"].get("replicas")
        self.expect(
            replicas is not None, "static membership: the node StatefulSet has no replica count"
        )
        self.expect(len(nodes) == replicas, f"{len(nodes)} nodes listed for {replicas} replicas")
        for i in range(replicas or 0):
            pod = f"{sts['metadata']['name']}-{i}"
            mine = advertise.replace("$(POD_NAME)", pod)
            self.expect(
                mine in nodes, f"node pod {pod} advertises {mine}, which is not in the node list"
            )
        self.expect(
            not _all(self.resources, "StatefulSet", "etcd"),
            "static membership with an etcd StatefulSet",
        )

    def check_etcd_membership(self, node_cm: dict[str, str], gate_cm: dict[str, str]) -> None:
        for name, cm in (("node", node_cm), ("gate", gate_cm)):
            self.expect(
                "GOVERSE_NODES" not in cm, f"etcd membership: the {name} still gets GOVERSE_NODES"
            )
            self.expect(
                bool(cm.get("GOVERSE_ETCD_PREFIX")), f"etcd membership: the {name} has no prefix"
            )
        for key in ("GOVERSE_ETCD_ENDPOINTS", "GOVERSE_ETCD_PREFIX"):
            self.expect(
                node_cm.get(key) == gate_cm.get(key), f"gates and nodes get different {key}"
            )
        etcd = _all(self.resources, "StatefulSet", "etcd")
        if etcd:
            self.check_bundled_etcd(etcd[0], node_cm["GOVERSE_ETCD_ENDPOINTS"])

    def check_bundled_etcd(self, sts: Resource, endpoints: str) -> None:
        name = sts["metadata"]["name"]
        namespace = sts["metadata"]["namespace"]
        container = _container(sts)
        env = _env(container)
        replicas = sts["spec"]["replicas"]
        self.expect(replicas % 2 == 1, f"{name}: {replicas} members, not an odd number")
        headless = _service(self.resources, sts["spec"]["serviceName"])
        self.expect(
            headless is not None
            and headless["spec"].get("clusterIP") == "None"
            and headless["spec"].get("publishNotReadyAddresses") is True,
            f"{name}: its Service is not headless with not-ready addresses published",
        )
        self.expect(
            sts["spec"].get("podManagementPolicy") == "Parallel",
            f"{name}: members must start in parallel to form a quorum",
        )
        self.expect(
            env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            and env["ETCD_NAME"]["value"] == "$(POD_NAME)",
            f"{name}: the member name is not the pod name",
        )
        client, peer, metrics = (_port(container, p) for p in ("client", "peer", "metrics"))
        domain = f"{sts['spec']['serviceName']}.{namespace}.svc."
        for variable, port, own_name in (
            ("ETCD_LISTEN_CLIENT_URLS", client, False),
            ("ETCD_ADVERTISE_CLIENT_URLS", client, True),
            ("ETCD_LISTEN_PEER_URLS", peer, False),
            ("ETCD_INITIAL_ADVERTISE_PEER_URLS", peer, True),
            ("ETCD_LISTEN_METRICS_URLS", metrics, False),
        ):
            url = urlsplit(env.get(variable, {}).get("value", ""))
            self.expect(url.port == port, f"{name}: {variable} is not on the container port {port}")
            if own_name:
                self.expect(
                    (url.hostname or "").startswith(f"$(pod_name).{domain}"),
                    f"{name}: {variable} is not on the member's stable DNS name",
                )
        members = dict(
            entry.split("=", 1) for entry in env["ETCD_INITIAL_CLUSTER"]["value"].split(",")
        )
        peer_url = env["ETCD_INITIAL_ADVERTISE_PEER_URLS"]["value"]
        expected = {
            f"{name}-{i}": peer_url.replace("$(POD_NAME)", f"{name}-{i}") for i in range(replicas)
        }
        self.expect(
            members == expected,
            f"{name}: ETCD_INITIAL_CLUSTER is not every member on its peer URL: {members}",
        )
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/livez")):
            get = container.get(probe, {}).get("httpGet", {})
            self.expect(
                get.get("path") == path and get.get("port") in ("metrics", metrics),
                f"{name}: {probe} is not GET {path} on the metrics port",
            )
        data_dir = env["ETCD_DATA_DIR"]["value"]
        claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
        self.expect(
            any(
                m["name"] in claims and data_dir.startswith(m["mountPath"].rstrip("/") + "/")
                for m in container.get("volumeMounts", [])
            ),
            f"{name}: the data dir {data_dir} is not on a persistent volume claim",
        )

        selector = sts["spec"]["selector"]["matchLabels"]
        clients = [
            r
            for r in self.resources
            if r["kind"] == "Service"
            and r["spec"].get("clusterIP") != "None"
            and r["spec"].get("selector") == selector
        ]
        self.expect(len(clients) == 1, f"{name}: expected one client Service, found {len(clients)}")
        for service in clients:
            port = next(
                p for p in service["spec"]["ports"] if p["targetPort"] in ("client", client)
            )
            host = f"{service['metadata']['name']}.{namespace}.svc."
            self.expect(
                endpoints.startswith(host) and endpoints.endswith(f":{port['port']}"),
                f"GOVERSE_ETCD_ENDPOINTS={endpoints} is not the etcd client Service {host}..."
                f":{port['port']}",
            )
        for policy in _all(self.resources, "NetworkPolicy", "etcd"):
            rules = {
                port["port"]: [
                    peer.get("podSelector", {}).get("matchLabels") for peer in rule.get("from", [])
                ]
                for rule in policy["spec"]["ingress"]
                for port in rule.get("ports", [])
            }
            allowed = {
                (labels or {}).get("app.kubernetes.io/component")
                for labels in rules.get("client", [None])
            }
            self.expect(
                allowed == {"gate", "node"},
                f"{name}: the NetworkPolicy lets {sorted(map(str, allowed))} reach the client "
                "port, not the gates and nodes only",
            )
            self.expect(
                [
                    (labels or {}).get("app.kubernetes.io/component")
                    for labels in rules.get("peer", [None])
                ]
                == ["etcd"],
                f"{name}: the NetworkPolicy does not limit the peer port to the members",
            )
        for pdb in _all(self.resources, "PodDisruptionBudget", "etcd"):
            self.expect(
                pdb["spec"].get("maxUnavailable") == 1,
                f"{name}: the PodDisruptionBudget allows more than one member down",
            )

    def check_service_pod(self, workload: Resource, cm: dict[str, str], service: str) -> None:
        name = workload["metadata"]["name"]
        container = _container(workload)
        port = _port(container, "grpc")
        if "GOVERSE_TLS_CERT" in cm:
            # The kubelet's probes speak no TLS: they use the plaintext health-only port.
            health = _port(container, "health")
            self.expect(
                health is not None and cm.get("GOVERSE_HEALTH_PORT") == str(health),
                f"{name}: with TLS, GOVERSE_HEALTH_PORT={cm.get('GOVERSE_HEALTH_PORT')} is not "
                f"the health container port {health}",
            )
            self.expect(health != port, f"{name}: the health port is the gRPC port")
            for policy in _all(self.resources, "NetworkPolicy", _component(workload) or ""):
                self.expect(
                    any(
                        p.get("port") in ("health", health)
                        for rule in policy["spec"].get("ingress", [])
                        for p in rule.get("ports", [])
                    ),
                    f"{name}: NetworkPolicy {policy['metadata']['name']} keeps the probes and "
                    "the helm test from the health port",
                )
            port = health
            self.check_security_files(workload, cm)
        elif cm.get("GOVERSE_JWT_SECRET_FILE") or cm.get("GOVERSE_ACCESS_RULES"):
            self.check_security_files(workload, cm)
        readiness = container["readinessProbe"].get("grpc", {})
        liveness = container["livenessProbe"].get("grpc", {})
        self.expect(
            readiness.get("port") == port, f"{name}: readiness probe is not gRPC on port {port}"
        )
        self.expect(
            readiness.get("service") == service, f"{name}: readiness probe does not check {service}"
        )
        self.expect(
            liveness.get("port") == port, f"{name}: liveness probe is not gRPC on port {port}"
        )
        self.expect(
            liveness.get("service", "") == "",
            f"{name}: liveness probe checks {liveness.get('service')}, not the overall status",
        )
        startup = container.get("startupProbe", {}).get("grpc", {})
        self.expect(
            startup.get("port") == port, f"{name}: startup probe is not gRPC on port {port}"
        )
        self.expect(
            startup.get("service", "") == "",
            f"{name}: startup probe checks {startup.get('service')}, not the overall status",
        )
        pre_stop = 0.0
        hook = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
        if hook:
            self.expect(hook[0] == "sleep", f"{name}: preStop is not a sleep")
            pre_stop = float(hook[1])
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        budget = _seconds(cm["GOVERSE_SHUTDOWN_TIMEOUT"])
        self.expect(
            grace >= pre_stop + budget + 2,
            f"{name}: grace {grace}s < preStop {pre_stop}s + shutdown {budget}s + 2s",
        )
        metrics = [p["containerPort"] for p in container["ports"] if p["name"] == "metrics"]
        # `off` disables the endpoint; 0 would bind a port nobody knows.
        self.expect(
            cm["GOVERSE_METRICS_PORT"] == (str(metrics[0]) if metrics else "off"),
            f"{name}: GOVERSE_METRICS_PORT={cm['GOVERSE_METRICS_PORT']} but metrics ports "
            f"{metrics or 'none'}",
        )
        self.expect(
            "checksum/config" in workload["spec"]["template"]["metadata"].get("annotations", {}),
            f"{name}: no checksum/config annotation",
        )
        self.expect(
            any(ref.get("configMapRef") for ref in container.get("envFrom", [])),
            f"{name}: the ConfigMap is not consumed through envFrom",
        )

    def check_egress(
        self, policy: Resource, component: str, cm: dict[str, str], node_port: int | None
    ) -> None:
        """An egress policy lets the pods reach what their ConfigMap says they use: DNS, the
        node port of the nodes, etcd, the PostgreSQL store (nodes), the OTLP endpoint."""
        name = policy["metadata"]["name"]
        rules = [
            (
                [
                    (peer.get("podSelector") or {})
                    .get("matchLabels", {})
                    .get("app.kubernetes.io/component")
                    for peer in rule.get("to", [])
                ],
                {(port.get("port"), port.get("protocol", "TCP")) for port in rule.get("ports", [])},
            )
            for rule in policy["spec"].get("egress", [])
        ]

        def allows(port: int | str, to: str | None = None, protocol: str = "TCP") -> bool:
            return any(
                (port, protocol) in ports and (to is None or to in peers) for peers, ports in rules
            )

        self.expect(allows(53, protocol="UDP"), f"{name}: egress does not allow DNS")
        self.expect(
            allows(node_port or 0, "node"), f"{name}: egress does not reach the nodes' gRPC port"
        )
        endpoints = cm.get("GOVERSE_ETCD_ENDPOINTS")
        if endpoints and _all(self.resources, "StatefulSet", "etcd"):
            self.expect(
                allows(2379, "etcd") or allows("client", "etcd"),
                f"{name}: egress does not reach the bundled etcd's client port",
            )
        elif endpoints:
            for endpoint in endpoints.split(","):
                port = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").port or 2379
                self.expect(allows(port), f"{name}: egress does not reach etcd {endpoint}")
        store = cm.get("GOVERSE_STORE", "")
        if component == "node" and store.startswith("postgres"):
            for host in urlsplit(store).netloc.rsplit("@", 1)[-1].split(","):
                port = int(host.rsplit(":", 1)[1]) if ":" in host else 5432
                self.expect(allows(port), f"{name}: egress does not reach the store on {port}")
        otlp = cm.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if otlp and cm.get("OTEL_TRACES_EXPORTER") == "otlp":
            port = urlsplit(otlp).port or 4317
            self.expect(
                allows(port) or allows("otlp-grpc", "otel-collector"),
                f"{name}: egress does not reach the OTLP endpoint {otlp}",
            )

    def check_security_files(self, workload: Resource, cm: dict[str, str]) -> None:
        """Every file a security flag names is a key of a read-only mounted Secret (TLS, JWT)
        or ConfigMap (access rules); the rules' ConfigMap is in the pod's checksums; no
        secret key is in the environment."""
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]
        container = _container(workload)
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        files: dict[str, tuple[str, Resource]] = {}
        for mount in container.get("volumeMounts", []):
            volume = volumes.get(mount["name"], {})
            source = volume.get("secret") or volume.get("configMap")
            if source is None:
                continue
            kind = "secret" if "secret" in volume else "configMap"
            for item in source.get("items", []):
                files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = (kind, mount)
            if kind == "configMap" and not source.get("items"):
                for cm_resource in self.resources:
                    if (
                        cm_resource["kind"] == "ConfigMap"
                        and cm_resource["metadata"]["name"] == source["name"]
                    ):
                        for key in cm_resource.get("data", {}):
                            files[f"{mount['mountPath'].rstrip('/')}/{key}"] = (kind, mount)
        for variable in (
            "GOVERSE_TLS_CERT",
            "GOVERSE_TLS_KEY",
            "GOVERSE_TLS_CA",
            "GOVERSE_CLIENT_TLS_CERT",
            "GOVERSE_CLIENT_TLS_KEY",
            "GOVERSE_JWT_SECRET_FILE",
            "GOVERSE_JWT_PUBLIC_KEY",
            "GOVERSE_JWT_JWKS_FILE",
            "GOVERSE_ACCESS_RULES",
        ):
            path = cm.get(variable)
            if path is None:
                continue
            found = files.get(path)
            want = "configMap" if variable == "GOVERSE_ACCESS_RULES" else "secret"
            self.expect(
                found is not None and found[0] == want,
                f"{name}: {variable}={path} is no key of a mounted {want}",
            )
            if found is not None:
                self.expect(
                    found[1].get("readOnly") is True,
                    f"{name}: {variable} is on a volume not mounted read-only",
                )
                self.expect(
                    not found[1].get("subPath"),
                    f"{name}: {variable} is mounted with subPath, which never sees a rotation",
                )
        if "GOVERSE_ACCESS_RULES" in cm:
            self.expect(
                "checksum/access-rules" in pod["metadata"].get("annotations", {}),
                f"{name}: no checksum/access-rules annotation: a change of the rules would not "
                "reach running pods",
            )
        for key, item in _env(container).items():
            self.expect(
                not item.get("valueFrom", {}).get("secretKeyRef") or key == "GOVERSE_STORE",
                f"{name}: {key} reads a Secret into the environment",
            )

    def check_store(self, node_cm: dict[str, str], sts: Resource) -> None:
        name = sts["metadata"]["name"]
        container = _container(sts)
        pod = sts["spec"]["template"]["spec"]
        env = _env(container)
        in_config = node_cm.get("GOVERSE_STORE")
        from_env = env.get("GOVERSE_STORE")
        self.expect(
            not (in_config and from_env),
            f"{name}: GOVERSE_STORE is in both the ConfigMap and the env",
        )
        if from_env is not None:
            self.expect(
                "value" not in from_env and bool(from_env.get("valueFrom", {}).get("secretKeyRef")),
                f"{name}: GOVERSE_STORE in the env is not from a Secret",
            )
        if in_config:
            self.expect(
                not _URL_PASSWORD.search(in_config),
                f"{name}: the ConfigMap's GOVERSE_STORE carries a password",
            )
            if in_config.startswith("sqlite:"):
                self.expect(
                    "GOVERSE_ETCD_ENDPOINTS" not in node_cm and sts["spec"].get("replicas") == 1,
                    f"{name}: a sqlite: store, whose file one node alone can use, with more "
                    "than one node or with etcd",
                )
        for key in node_cm:
            self.expect(
                "PASSWORD" not in key or key.endswith("_FILE"),
                f"{name}: the ConfigMap sets {key}",
            )
        for key, item in env.items():
            self.expect(
                "PASSWORD" not in key or key.endswith("_FILE") or "value" not in item,
                f"{name}: {key} is set to a literal value in the env",
            )

        password_file = node_cm.get("GOVERSE_STORE_PASSWORD_FILE")
        if not password_file:
            return
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        found = None
        for mount in container.get("volumeMounts", []):
            secret = volumes.get(mount["name"], {}).get("secret")
            if secret is None:
                continue
            for item in secret.get("items", []):
                if f"{mount['mountPath'].rstrip('/')}/{item['path']}" == password_file:
                    found = (mount, secret, item)
        if found is None:
            self.problems.append(
                f"{name}: GOVERSE_STORE_PASSWORD_FILE={password_file} is no key of a mounted Secret"
            )
            return
        mount, secret, item = found
        self.expect(
            mount.get("readOnly") is True, f"{name}: the password Secret is not mounted read-only"
        )
        self.expect(
            len(secret["items"]) == 1, f"{name}: the password volume holds more than the password"
        )
        for key, variable in env.items():
            ref = variable.get("valueFrom", {}).get("secretKeyRef", {})
            self.expect(
                (ref.get("name"), ref.get("key")) != (secret["secretName"], item["key"]),
                f"{name}: {key} puts the store password in the environment",
            )
        mode = item.get("mode", secret.get("defaultMode", _DEFAULT_SECRET_MODE))
        group = pod.get("securityContext", {}).get("fsGroup")
        # With an fsGroup the file's group is the node's; without, it is root's.
        readable = mode & 0o040 if group is not None else mode & 0o004
        self.expect(
            bool(readable), f"{name}: the node cannot read its password file (mode {mode:o})"
        )
        self.expect(
            group is None or not mode & 0o004,
            f"{name}: the password file is readable by others (mode {mode:o}) though its "
            "group is the node's",
        )

    def check_autoscalers(self) -> None:
        workloads = {
            (r["kind"], r["metadata"]["name"]): r
            for r in self.resources
            if r["kind"] in ("StatefulSet", "Deployment")
        }
        node_cm = _one(self.resources, "ConfigMap", "node")["data"]
        scaled = set()
        for hpa in (r for r in self.resources if r["kind"] == "HorizontalPodAutoscaler"):
            name = hpa["metadata"]["name"]
            target = hpa["spec"]["scaleTargetRef"]
            workload = workloads.get((target["kind"], target["name"]))
            if workload is None:
                self.problems.append(f"HPA {name}: no {target['kind']} {target['name']}")
                continue
            scaled.add((target["kind"], target["name"]))
            self.expect(
                _component(workload) == _component(hpa),
                f"HPA {name} scales a workload of another component",
            )
            self.expect(
                "replicas" not in workload["spec"],
                f"HPA {name}: {target['name']} sets its own replica count, which every upgrade "
                "would reset",
            )
            self.expect(
                hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"],
                f"HPA {name}: minReplicas above maxReplicas",
            )
            self.expect(
                "cpu" in _container(workload).get("resources", {}).get("requests", {}),
                f"HPA {name}: {target['name']} has no CPU request to measure utilization against",
            )
            if _component(workload) == "node":
                self.expect(
                    "GOVERSE_ETCD_ENDPOINTS" in node_cm,
                    f"HPA {name}: nodes autoscaled with a static node list",
                )
        for (kind, name), workload in workloads.items():
            if _component(workload) in ("node", "gate") and (kind, name) not in scaled:
                self.expect("replicas" in workload["spec"], f"{name}: no replica count and no HPA")

    def check_disruption_budgets(self) -> None:
        workloads = [r for r in self.resources if r["kind"] in ("StatefulSet", "Deployment")]
        for pdb in (r for r in self.resources if r["kind"] == "PodDisruptionBudget"):
            selector = pdb["spec"]["selector"].get("matchLabels", {})
            self.expect(
                sum(_selects(selector, w) for w in workloads) == 1,
                f"PodDisruptionBudget {pdb['metadata']['name']} does not select the pods of "
                "one workload",
            )


def check(resources: list[Resource]) -> list[str]:
    return Checker(resources).check()


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
