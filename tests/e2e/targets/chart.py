"""From `helm template` output to `docker run`: the pods the chart's workloads would make.

The docker target runs what the chart renders, not a hand-written copy of it. For every
StatefulSet and Deployment (and the `helm test` Pods) this module makes a :class:`PodPlan`:

- pod names as their controllers make them (``<statefulset>-<i>``,
  ``<deployment>-<hash>-<suffix>``), the host name, and the DNS names Kubernetes would give
  the pod, as Docker network aliases: ``<svc>.<ns>.svc.<domain>`` for every Service whose
  selector matches the pod, and ``<pod>.<svc>.<ns>.svc.<domain>`` under a StatefulSet's
  governing Service;
- the container's environment as the kubelet builds it: ``envFrom`` ConfigMaps, then
  ``env`` (values with ``$(VAR)`` expanded, ConfigMap keys, the downward API: pod name,
  namespace, uid, labels, annotations, pod IP, host IP, node name, service account, resource
  limits and requests); ``$(VAR)`` expanded in ``command`` and ``args`` too;
- ``command`` as the entrypoint and ``args`` after the image (Kubernetes semantics);
- the security context where Docker has an equivalent: ``runAsUser``/``runAsGroup``
  (``--user``), ``fsGroup`` and ``supplementalGroups`` (``--group-add``),
  ``readOnlyRootFilesystem`` (``--read-only``), capabilities (``--cap-drop``/``--cap-add``),
  ``allowPrivilegeEscalation: false`` (``no-new-privileges``), ``privileged``, the seccomp
  profile; ``runAsNonRoot`` is checked;
- ``emptyDir`` volumes as tmpfs, ``configMap`` volumes as read-only files, and ``secret``
  volumes too, from the Secrets the caller says exist (:attr:`Placement.secrets`: the chart
  references Secrets it does not make, such as TLS certificates); memory and CPU limits; the
  readiness probe; ``terminationGracePeriodSeconds`` as the stop timeout.

Anything else a pod spec could ask for (another volume type, several containers, an exec
probe...) raises :class:`UnsupportedSpec`, so a chart change the docker target cannot honour
fails loudly instead of being dropped. Not emulated: liveness probes, ``preStop`` hooks
(``docker stop`` sends SIGTERM at once), NetworkPolicies, Service load balancing (Docker's DNS
answers an alias with every container that has it), a volume's ``defaultMode`` (every mounted
file is readable by all, which the kubelet achieves for the pod's user with ``fsGroup``), the
``..data`` symlink swap of a Secret volume (nothing rotates here).
"""

from __future__ import annotations

import json
import math
import re
import secrets
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.targets.base import TargetError

Resource = dict[str, Any]

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "goverse"
TOOLS = ROOT / "build" / "tools"
HELM = TOOLS / "bin" / "helm"
TOOLS_PYTHON = TOOLS / "venv" / "bin" / "python"
RENDER = ROOT / "scripts" / "e2e" / "render.py"

# What Kubernetes uses to name the pods of a ReplicaSet ("bcdfghjklmnpqrstvwxz2456789").
_POD_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
_LABEL_PATH = re.compile(r"^metadata\.(labels|annotations)\['([^']+)'\]$")


class UnsupportedSpec(TargetError):
    """The rendered pod spec asks for something the docker target does not emulate."""


@dataclass(frozen=True)
class Probe:
    """A readiness probe: ``grpc`` (grpc.health.v1 with `service`), ``tcp`` or ``http``."""

    kind: str
    port: int
    service: str = ""
    path: str = "/"


@dataclass
class PodPlan:
    """One pod of one container, as `docker run` arguments plus what the target needs."""

    component: str
    name: str
    namespace: str
    ip: str
    image: str
    hostname: str
    aliases: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: str | None = None
    args: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    """Container port by name (unnamed ports by their number)."""
    options: list[str] = field(default_factory=list)
    """Security, resources and tmpfs flags of `docker run`."""
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    """ConfigMap and Secret volumes: mount path -> file name -> content."""
    readiness: Probe | None = None
    stop_timeout: int = 30
    nonroot_from_image: bool = False
    """runAsNonRoot without runAsUser: the image's user must be numeric and not 0."""
    run_to_completion: bool = False


@dataclass(frozen=True)
class Placement:
    """Where the pods run: what the downward API reports besides the pod itself."""

    namespace: str
    cluster_domain: str = "cluster.local"
    node_name: str = "docker-e2e"
    host_ip: str = ""
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """The Secrets of the namespace (name -> key -> content) that ``secret`` volumes mount."""


# -- rendering ------------------------------------------------------------------------------


def render(release: str, namespace: str, helm_args: list[str]) -> list[Resource]:
    """`helm template` of the chart with the pinned helm (``make chart-tools``), as objects."""
    for tool in (HELM, TOOLS_PYTHON):
        if not tool.exists():
            raise TargetError(f"{tool} is missing: run `make chart-tools`")
    done = subprocess.run(
        [
            str(TOOLS_PYTHON),
            str(RENDER),
            str(HELM),
            release,
            str(CHART),
            "--namespace",
            namespace,
            *helm_args,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise TargetError(f"helm template failed:\n{done.stderr}")
    resources: list[Resource] = json.loads(done.stdout)
    return resources


# -- values -----------------------------------------------------------------------------------


def quantity(text: str | int | float) -> float:
    """A Kubernetes quantity (``512Mi``, ``250m``, ``1.5``, ``1G``) as a number."""
    if isinstance(text, int | float):
        return float(text)
    match = _QUANTITY.match(text.strip())
    if not match:
        raise UnsupportedSpec(f"not a quantity: {text!r}")
    number, suffix = float(match.group(1)), match.group(2)
    if suffix == "m":
        return number / 1000
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    raise UnsupportedSpec(f"unknown quantity suffix in {text!r}")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, undefined references
    are kept as written, ``$$`` is a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REFERENCE.sub(replace, value)


def _by_kind(resources: list[Resource], kind: str) -> list[Resource]:
    return [item for item in resources if item.get("kind") == kind]


def _configmaps(resources: list[Resource]) -> dict[str, dict[str, str]]:
    return {
        item["metadata"]["name"]: {key: str(value) for key, value in item.get("data", {}).items()}
        for item in _by_kind(resources, "ConfigMap")
    }


def _selects(service: Resource, labels: Mapping[str, str]) -> bool:
    selector = service.get("spec", {}).get("selector") or {}
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _pod_field(path: str, pod: Resource, name: str, ip: str, placement: Placement, uid: str) -> str:
    metadata = pod.get("metadata", {})
    simple = {
        "metadata.name": name,
        "metadata.namespace": placement.namespace,
        "metadata.uid": uid,
        "spec.nodeName": placement.node_name,
        "spec.serviceAccountName": str(pod["spec"].get("serviceAccountName", "default")),
        "status.hostIP": placement.host_ip,
        "status.hostIPs": placement.host_ip,
        "status.podIP": ip,
        "status.podIPs": ip,
    }
    if path in simple:
        return simple[path]
    match = _LABEL_PATH.match(path)
    if match:
        return str(metadata.get(match.group(1), {}).get(match.group(2), ""))
    raise UnsupportedSpec(f"downward API field {path!r}")


def _resource_field(ref: Resource, container: Resource) -> str:
    section, _, kind = ref["resource"].partition(".")
    value = container.get("resources", {}).get(section, {}).get(kind)
    if value is None:
        raise UnsupportedSpec(f"resourceFieldRef {ref['resource']!r} without a value set")
    divisor = quantity(ref.get("divisor", "1"))
    return str(math.ceil(quantity(value) / divisor))


def container_env(
    container: Resource,
    pod: Resource,
    name: str,
    ip: str,
    placement: Placement,
    configmaps: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """The environment the kubelet would give `container` of pod `name`."""
    uid = f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(2)}"
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" not in source:
            raise UnsupportedSpec(f"envFrom {sorted(source)}")
        ref = source["configMapRef"]
        data = configmaps.get(ref["name"])
        if data is None:
            if ref.get("optional"):
                continue
            raise UnsupportedSpec(f"envFrom ConfigMap {ref['name']!r} is not rendered")
        prefix = source.get("prefix", "")
        env.update({prefix + key: value for key, value in data.items()})
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = expand(str(item["value"]), env)
            continue
        source = item.get("valueFrom", {})
        if "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            env[item["name"]] = _pod_field(path, pod, name, ip, placement, uid)
        elif "resourceFieldRef" in source:
            env[item["name"]] = _resource_field(source["resourceFieldRef"], container)
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            value = configmaps.get(ref["name"], {}).get(ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise UnsupportedSpec(f"ConfigMap key {ref['name']}/{ref['key']} not rendered")
            env[item["name"]] = value
        elif "valueFrom" not in item:
            env[item["name"]] = ""
        else:
            raise UnsupportedSpec(f"env {item['name']} from {sorted(source)}")
    return env


def _security_options(pod_spec: Resource, container: Resource) -> tuple[list[str], bool]:
    """`docker run` flags for the merged security context; and whether runAsNonRoot must be
    checked against the image's user."""
    pod_context = pod_spec.get("securityContext") or {}
    context = {**pod_context, **(container.get("securityContext") or {})}
    options: list[str] = []
    user, group = context.get("runAsUser"), context.get("runAsGroup")
    nonroot_from_image = False
    if context.get("runAsNonRoot"):
        if user == 0:
            raise UnsupportedSpec("runAsNonRoot with runAsUser 0: the kubelet would refuse it")
        nonroot_from_image = user is None
    if user is not None:
        options += ["--user", f"{user}:{group}" if group is not None else str(user)]
    elif group is not None:
        raise UnsupportedSpec("runAsGroup without runAsUser")
    for extra in [pod_context.get("fsGroup"), *pod_context.get("supplementalGroups", [])]:
        if extra is not None:
            options += ["--group-add", str(extra)]
    if context.get("readOnlyRootFilesystem"):
        options.append("--read-only")
    if context.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    if context.get("privileged"):
        options.append("--privileged")
    capabilities = context.get("capabilities") or {}
    for cap in capabilities.get("drop", []):
        options += ["--cap-drop", cap]
    for cap in capabilities.get("add", []):
        options += ["--cap-add", cap]
    seccomp = (context.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    if seccomp == "Unconfined":
        options += ["--security-opt", "seccomp=unconfined"]
    elif seccomp != "RuntimeDefault":
        raise UnsupportedSpec(f"seccompProfile {seccomp}")
    return options, nonroot_from_image


def _resource_options(container: Resource) -> list[str]:
    limits = container.get("resources", {}).get("limits", {})
    options: list[str] = []
    if "memory" in limits:
        options += ["--memory", str(int(quantity(limits["memory"])))]
    if "cpu" in limits:
        options += ["--cpus", f"{quantity(limits['cpu']):g}"]
    return options


def _volume_files(
    kind: str, name: str, data: Mapping[str, str] | None, source: Resource
) -> dict[str, str]:
    """The files a ``configMap`` or ``secret`` volume of `data` holds: every key, or the
    ``items`` asked for (a missing key is an error unless the volume is optional)."""
    if data is None:
        if source.get("optional"):
            return {}
        raise UnsupportedSpec(f"{kind} volume {name} does not exist")
    items = source.get("items")
    if not items:
        return dict(data)
    files = {}
    for item in items:
        if item["key"] in data:
            files[item["path"]] = data[item["key"]]
        elif not source.get("optional"):
            raise UnsupportedSpec(f"{kind} volume {name} has no key {item['key']!r}")
    return files


def _volumes(
    pod_spec: Resource,
    container: Resource,
    configmaps: Mapping[str, Mapping[str, str]],
    secret_data: Mapping[str, Mapping[str, str]],
) -> tuple[list[str], dict[str, dict[str, str]]]:
    volumes = {volume["name"]: volume for volume in pod_spec.get("volumes", [])}
    options: list[str] = []
    files: dict[str, dict[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        if mount.get("subPath") or mount.get("subPathExpr"):
            raise UnsupportedSpec(f"subPath on volume mount {mount['name']}")
        volume = volumes.get(mount["name"])
        if volume is None:
            raise UnsupportedSpec(f"volume {mount['name']} is mounted but not declared")
        path = mount["mountPath"]
        if "emptyDir" in volume:
            tmpfs = f"{path}:rw,nosuid,nodev,mode=1777"
            size = (volume["emptyDir"] or {}).get("sizeLimit")
            if size:
                tmpfs += f",size={int(quantity(size))}"
            options += ["--tmpfs", tmpfs]
        elif "configMap" in volume:
            source = volume["configMap"]
            data = configmaps.get(source["name"])
            files[path] = _volume_files("configMap", source["name"], data, source)
        elif "secret" in volume:
            source = volume["secret"]
            data = secret_data.get(source["secretName"])
            files[path] = _volume_files("secret", source["secretName"], data, source)
        else:
            raise UnsupportedSpec(f"volume {mount['name']}: {sorted(set(volume) - {'name'})}")
    return options, files


def _probe(container: Resource, ports: Mapping[str, int]) -> Probe | None:
    spec = container.get("readinessProbe")
    if not spec:
        return None

    def port_of(value: int | str) -> int:
        if isinstance(value, int):
            return value
        if value in ports:
            return ports[value]
        raise UnsupportedSpec(f"probe port {value!r} is not a container port")

    if "grpc" in spec:
        return Probe("grpc", port_of(spec["grpc"]["port"]), spec["grpc"].get("service", ""))
    if "tcpSocket" in spec:
        return Probe("tcp", port_of(spec["tcpSocket"]["port"]))
    if "httpGet" in spec:
        return Probe(
            "http", port_of(spec["httpGet"]["port"]), path=spec["httpGet"].get("path", "/")
        )
    raise UnsupportedSpec(f"readiness probe {sorted(spec)}")


def pod_plan(
    component: str,
    pod: Resource,
    name: str,
    ip: str,
    aliases: list[str],
    placement: Placement,
    configmaps: Mapping[str, Mapping[str, str]],
) -> PodPlan:
    """The plan of one pod from its template (`pod` has ``metadata`` and ``spec``)."""
    spec = pod["spec"]
    if len(spec.get("containers", [])) != 1 or spec.get("initContainers"):
        raise UnsupportedSpec(f"{name}: only pods of exactly one container are emulated")
    container = spec["containers"][0]
    env = container_env(container, pod, name, ip, placement, configmaps)
    command = [expand(str(part), env) for part in container.get("command", [])]
    args = [expand(str(part), env) for part in container.get("args", [])]
    ports = {
        str(port.get("name") or port["containerPort"]): int(port["containerPort"])
        for port in container.get("ports", [])
        if port.get("protocol", "TCP") == "TCP"
    }
    security, nonroot_from_image = _security_options(spec, container)
    volume_options, files = _volumes(spec, container, configmaps, placement.secrets)
    options = [*security, *_resource_options(container), *volume_options]
    if container.get("workingDir"):
        options += ["--workdir", container["workingDir"]]
    return PodPlan(
        component=component,
        name=name,
        namespace=placement.namespace,
        ip=ip,
        image=container["image"],
        hostname=name[:63],
        aliases=aliases,
        labels={str(k): str(v) for k, v in (pod.get("metadata", {}).get("labels") or {}).items()},
        env=env,
        entrypoint=command[0] if command else None,
        args=[*command[1:], *args],
        ports=ports,
        options=options,
        files=files,
        readiness=_probe(container, ports),
        stop_timeout=int(spec.get("terminationGracePeriodSeconds", 30)),
        nonroot_from_image=nonroot_from_image,
        run_to_completion=spec.get("restartPolicy") == "Never",
    )


def replica_set_suffix() -> str:
    """``<pod-template-hash>-<suffix>`` as a Deployment's ReplicaSet names its pods."""
    pick = secrets.choice
    return (
        "".join(pick(_POD_NAME_ALPHABET) for _ in range(10))
        + "-"
        + "".join(pick(_POD_NAME_ALPHABET) for _ in range(5))
    )


def _workload_pod(
    resources: list[Resource],
    kind: str,
    workload: Resource,
    index: int,
    placement: Placement,
    ip: str,
) -> PodPlan:
    """Pod `index` of `workload` (a StatefulSet or a Deployment)."""
    template = workload["spec"]["template"]
    labels = template.get("metadata", {}).get("labels") or {}
    component = labels.get("app.kubernetes.io/component", workload["metadata"]["name"])
    selecting = [svc for svc in _by_kind(resources, "Service") if _selects(svc, labels)]
    domain = f"{placement.namespace}.svc.{placement.cluster_domain}"
    base = workload["metadata"]["name"]
    name = f"{base}-{index}" if kind == "StatefulSet" else f"{base}-{replica_set_suffix()}"
    aliases = [f"{svc['metadata']['name']}.{domain}" for svc in selecting]
    if kind == "StatefulSet":
        governing = workload["spec"].get("serviceName")
        if governing not in {svc["metadata"]["name"] for svc in selecting}:
            raise UnsupportedSpec(f"{base}: governing Service {governing!r} missing")
        aliases.insert(0, f"{name}.{governing}.{domain}")
    return pod_plan(component, template, name, ip, aliases, placement, _configmaps(resources))


def service_dns_names(resources: list[Resource], component: str, placement: Placement) -> list[str]:
    """The DNS names peers reach the pods of `component`'s workloads by, as their aliases
    say: each Service that selects them, and ``*.<governing Service>`` for a StatefulSet's
    pods (what a certificate shared by those pods must carry)."""
    domain = f"{placement.namespace}.svc.{placement.cluster_domain}"
    names: list[str] = []
    for kind in ("StatefulSet", "Deployment"):
        for workload in _by_kind(resources, kind):
            labels = workload["spec"]["template"].get("metadata", {}).get("labels") or {}
            if labels.get("app.kubernetes.io/component") != component:
                continue
            if kind == "StatefulSet":
                names.append(f"*.{workload['spec'].get('serviceName')}.{domain}")
            for svc in _by_kind(resources, "Service"):
                if _selects(svc, labels):
                    names.append(f"{svc['metadata']['name']}.{domain}")
    return list(dict.fromkeys(names))


def workload_pods(
    resources: list[Resource], placement: Placement, ips: Iterator[str]
) -> list[PodPlan]:
    """The pods of every StatefulSet and Deployment, StatefulSets first, replicas in order."""
    plans: list[PodPlan] = []
    for kind in ("StatefulSet", "Deployment"):
        for workload in _by_kind(resources, kind):
            for index in range(int(workload["spec"].get("replicas", 1))):
                plans.append(_workload_pod(resources, kind, workload, index, placement, next(ips)))
    return plans


def statefulset_pod(
    resources: list[Resource], component: str, index: int, placement: Placement, ip: str
) -> PodPlan:
    """Pod `index` of the StatefulSet of `component`: what its controller makes when scaled
    to more than `index` replicas (same template, the ordinal in the name). Pods are made
    and removed all at once (``Parallel``); ``OrderedReady`` one by one is not emulated."""
    for workload in _by_kind(resources, "StatefulSet"):
        labels = workload["spec"]["template"].get("metadata", {}).get("labels") or {}
        if labels.get("app.kubernetes.io/component") == component:
            policy = workload["spec"].get("podManagementPolicy", "OrderedReady")
            if policy != "Parallel":
                raise UnsupportedSpec(f"scaling a StatefulSet of podManagementPolicy {policy}")
            return _workload_pod(resources, "StatefulSet", workload, index, placement, ip)
    raise TargetError(f"the chart rendered no StatefulSet of {component} pods")


def helm_test_pods(
    resources: list[Resource], placement: Placement, ips: Iterator[str]
) -> list[PodPlan]:
    """The Pods annotated ``helm.sh/hook: test`` (what `helm test` runs)."""
    configmaps = _configmaps(resources)
    plans = []
    for pod in _by_kind(resources, "Pod"):
        hooks = (pod["metadata"].get("annotations") or {}).get("helm.sh/hook", "")
        if "test" in hooks.split(","):
            name = pod["metadata"]["name"]
            plans.append(pod_plan("test", pod, name, next(ips), [], placement, configmaps))
    return plans


def docker_run_command(
    plan: PodPlan,
    container: str,
    network: str,
    labels: Mapping[str, str],
    published: Iterable[int],
    mounts: Mapping[str, Path],
) -> list[str]:
    """``docker run`` for `plan` as container `container` on `network`; each container port
    in `published` is published on a port of 127.0.0.1 that Docker chooses (``docker port``
    tells which); `mounts` maps mount paths to host directories."""
    command = ["docker", "run", "--detach", "--name", container, "--network", network]
    command += ["--ip", plan.ip, "--hostname", plan.hostname]
    for alias in plan.aliases:
        command += ["--network-alias", alias]
    for key, value in {**plan.labels, **labels}.items():
        command += ["--label", f"{key}={value}"]
    for container_port in published:
        command += ["--publish", f"127.0.0.1::{container_port}"]
    for path, directory in mounts.items():
        command += ["--volume", f"{directory}:{path}:ro"]
    command += ["--stop-timeout", str(plan.stop_timeout), *plan.options]
    for key, value in plan.env.items():
        command += ["--env", f"{key}={value}"]
    if plan.entrypoint is not None:
        command += ["--entrypoint", plan.entrypoint]
    return [*command, plan.image, *plan.args]
