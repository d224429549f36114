"""Validates rendered manifests offline against the Kubernetes JSON schemas, strictly.

Runs with the tools' interpreter (build/tools/venv, where kubernetes-validate is installed):

    build/tools/venv/bin/python scripts/chart/validate.py -k 1.27.0 -k 1.37.0 FILE...

Differences from the `kubernetes-validate` command, on purpose:
- a resource whose schema is unknown is an error, not a warning (a typo in apiVersion must
  fail), except the custom resources listed in CUSTOM_RESOURCES (ServiceMonitor, GRPCRoute,
  cert-manager's Certificate),
  which are checked by hand here because their CRD schemas do not ship with
  kubernetes-validate;
- the pod security settings the chart promises are checked on every pod template;
- schemas are loaded once per version, not once per resource.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # in build/tools/venv
from kubernetes_validate import utils  # type: ignore[import-not-found, unused-ignore]

Resource = dict[str, Any]

# Schema files are large; kubernetes-validate re-reads them for every resource.
utils.schema_contents = functools.lru_cache(maxsize=None)(utils.schema_contents)


def _check_service_monitor(resource: Resource) -> list[str]:
    """The fields of monitoring.coreos.com/v1 ServiceMonitor the chart uses, by hand."""
    problems = []
    spec = resource.get("spec") or {}
    known = {"endpoints", "selector", "namespaceSelector", "jobLabel", "podTargetLabels"}
    problems += [f"spec.{key}: not a field the chart should set" for key in set(spec) - known]
    if not (spec.get("selector") or {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels: missing or empty")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problems.append("spec.endpoints: missing or empty")
    for i, endpoint in enumerate(endpoints or []):
        if not isinstance(endpoint.get("port"), str) or not endpoint["port"]:
            problems.append(f"spec.endpoints.{i}.port: must name a Service port")
        for key in ("interval", "scrapeTimeout"):
            value = endpoint.get(key)
            if value is not None and not (isinstance(value, str) and value[-1:] in "smh"):
                problems.append(f"spec.endpoints.{i}.{key}: not a duration: {value!r}")
    return problems


def _check_grpc_route(resource: Resource) -> list[str]:
    """The fields of gateway.networking.k8s.io/v1 GRPCRoute the chart uses, by hand."""
    problems = []
    spec = resource.get("spec") or {}
    problems += [
        f"spec.{key}: not a field the chart should set"
        for key in set(spec) - {"parentRefs", "hostnames", "rules"}
    ]
    parents = spec.get("parentRefs")
    if not isinstance(parents, list) or not parents:
        problems.append("spec.parentRefs: missing or empty")
    known = {"group", "kind", "namespace", "name", "sectionName", "port"}
    for i, parent in enumerate(parents or []):
        problems += [f"spec.parentRefs.{i}.{key}: unknown" for key in set(parent) - known]
        if not isinstance(parent.get("name"), str) or not parent["name"]:
            problems.append(f"spec.parentRefs.{i}.name: missing")
    for i, host in enumerate(spec.get("hostnames") or []):
        if not isinstance(host, str) or not host or ":" in host:
            problems.append(f"spec.hostnames.{i}: not a host name: {host!r}")
    rules = spec.get("rules")
    if not isinstance(rules, list) or not rules:
        problems.append("spec.rules: missing or empty")
    for i, rule in enumerate(rules or []):
        problems += [f"spec.rules.{i}.{key}: unknown" for key in set(rule) - {"backendRefs"}]
        for j, ref in enumerate(rule.get("backendRefs") or []):
            if set(ref) != {"name", "port"} or not isinstance(ref.get("port"), int):
                problems.append(f"spec.rules.{i}.backendRefs.{j}: not a Service name and port")
    return problems


_CERTIFICATE_USAGES = {"server auth", "client auth", "digital signature", "key encipherment"}


def _check_certificate(resource: Resource) -> list[str]:
    """The fields of cert-manager.io/v1 Certificate the chart uses, by hand."""
    problems = []
    spec = resource.get("spec") or {}
    known = {"secretName", "dnsNames", "uris", "usages", "duration", "renewBefore"}
    known |= {"privateKey", "issuerRef"}
    problems += [f"spec.{key}: not a field the chart should set" for key in set(spec) - known]
    if not isinstance(spec.get("secretName"), str) or not spec["secretName"]:
        problems.append("spec.secretName: missing")
    if not spec.get("dnsNames") and not spec.get("uris"):
        problems.append("spec: neither dnsNames nor uris")
    for key in ("dnsNames", "uris", "usages"):
        if not isinstance(spec.get(key, []), list):
            problems.append(f"spec.{key}: not a list")
    problems += [
        f"spec.usages: unknown {u!r}" for u in set(spec.get("usages", [])) - _CERTIFICATE_USAGES
    ]
    for key in ("duration", "renewBefore"):
        value = spec.get(key)
        if value is not None and not (isinstance(value, str) and value[-1:] in "hms"):
            problems.append(f"spec.{key}: not a duration: {value!r}")
    private_key = spec.get("privateKey") or {}
    problems += [
        f"spec.privateKey.{k}: unknown"
        for k in set(private_key) - {"algorithm", "size", "rotationPolicy"}
    ]
    if private_key.get("algorithm") not in (None, "RSA", "ECDSA", "Ed25519"):
        problems.append(f"spec.privateKey.algorithm: {private_key['algorithm']!r}")
    issuer = spec.get("issuerRef") or {}
    if not issuer.get("name") or set(issuer) - {"name", "kind", "group"}:
        problems.append(f"spec.issuerRef: not a name, kind and group: {issuer}")
    if issuer.get("kind") not in (None, "Issuer", "ClusterIssuer"):
        problems.append(f"spec.issuerRef.kind: {issuer['kind']!r}")
    return problems


CUSTOM_RESOURCES: dict[tuple[str, str], Callable[[Resource], list[str]]] = {
    ("cert-manager.io/v1", "Certificate"): _check_certificate,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _check_service_monitor,
    ("gateway.networking.k8s.io/v1", "GRPCRoute"): _check_grpc_route,
}


def _pod_specs(resource: Resource) -> Iterator[Resource]:
    if resource.get("kind") == "Pod":
        yield resource.get("spec") or {}
    elif resource.get("kind") in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        yield ((resource.get("spec") or {}).get("template") or {}).get("spec") or {}


def _check_pod_security(resource: Resource) -> list[str]:
    """Non-root, seccomp RuntimeDefault, read-only root, no escalation, no capabilities."""
    problems = []
    for spec in _pod_specs(resource):
        pod = spec.get("securityContext") or {}
        if pod.get("runAsNonRoot") is not True:
            problems.append("pod securityContext.runAsNonRoot is not true")
        if (pod.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            problems.append("pod securityContext.seccompProfile.type is not RuntimeDefault")
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            name = container.get("name")
            context = container.get("securityContext") or {}
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"container {name}: readOnlyRootFilesystem is not true")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"container {name}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((context.get("capabilities") or {}).get("drop") or []):
                problems.append(f"container {name}: capabilities.drop lacks ALL")
    return problems


def _validate(resource: Resource, version: str) -> list[str]:
    custom = CUSTOM_RESOURCES.get((resource.get("apiVersion", ""), resource.get("kind", "")))
    if custom is not None:
        return custom(resource)
    problems = _check_pod_security(resource)
    try:
        utils.validate(resource, version, strict=True)  # reports the first schema error
    except utils.ValidationError as error:
        path = ".".join(str(item) for item in error.path)
        problems.append(f"{path}: {error.message}")
    except utils.SchemaNotFoundError as error:
        problems.append(error.message)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-k",
        "--kubernetes-version",
        action="append",
        required=True,
        help="a Kubernetes version to validate against (repeatable)",
    )
    parser.add_argument("files", nargs="+", help="multi-document YAML files")
    args = parser.parse_args()

    supported = utils.all_versions()
    for version in args.kubernetes_version:
        if version not in supported:
            parser.error(f"kubernetes-validate has no schemas for {version} (has {supported})")

    failures = checked = 0
    for path in args.files:
        with open(path) as f:
            resources = [doc for doc in yaml.safe_load_all(f) if doc]
        for resource in resources:
            name = f"{resource.get('kind')}/{(resource.get('metadata') or {}).get('name')}"
            for version in args.kubernetes_version:
                checked += 1
                for problem in _validate(resource, version):
                    failures += 1
                    print(f"FAIL {path}: {name} (Kubernetes {version}): {problem}")
    custom = ", ".join(kind for _, kind in CUSTOM_RESOURCES)
    print(
        f"validated {checked} resource-versions in {len(args.files)} file(s) against "
        f"Kubernetes {', '.join(args.kubernetes_version)} (strict; {custom} checked by hand): "
        f"{failures} problem(s)"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
