"""Checks what a change of the replica counts restarts: nothing with etcd, everything with static.

    build/tools/venv/bin/python scripts/chart/scaling.py BASE SCALED [BASE SCALED ...]

BASE is a `helm template` output; SCALED the same values rendered again with other gate and
node replica counts and autoscaler bounds (check.sh sets them). A pod restarts when its pod
template changes (the `checksum/config` annotation included), so:

- etcd membership (no GOVERSE_NODES): the gate and node pod templates and ConfigMaps are the
  same in both renderings: `kubectl scale`, an autoscaler or a `helm upgrade` of the counts
  starts and stops pods, nothing else;
- static membership: the node list follows the node count, so the node pod template differs
  (its checksum): every node and gate restarts, as documented.

Each pair must also differ somewhere (a replica count or an autoscaler bound), so the check
cannot pass because the override did not apply.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # in build/tools/venv

Resource = dict[str, Any]
COMPONENTS = ("gate", "node")
SCALED_KINDS = ("StatefulSet", "Deployment", "HorizontalPodAutoscaler")


def _load(path: str) -> list[Resource]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _of(resources: list[Resource], kind: str, component: str) -> list[Resource]:
    return [
        r
        for r in resources
        if r["kind"] == kind
        and r["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
    ]


def _pod_template(resources: list[Resource], component: str) -> Any:
    kind = "StatefulSet" if component == "node" else "Deployment"
    return [w["spec"]["template"] for w in _of(resources, kind, component)]


def _counts(resources: list[Resource]) -> list[Any]:
    return [
        (
            r["kind"],
            r["spec"].get("replicas"),
            r["spec"].get("minReplicas"),
            r["spec"].get("maxReplicas"),
        )
        for r in resources
        if r["kind"] in SCALED_KINDS
    ]


def check(base: list[Resource], scaled: list[Resource]) -> tuple[str, list[str]]:
    """The membership of the pair, and its problems."""
    problems = []
    if _counts(base) == _counts(scaled):
        problems.append("the renderings have the same replica counts: the override did not apply")
    node_cm = _of(base, "ConfigMap", "node")[0]["data"]
    if "GOVERSE_NODES" not in node_cm:
        for component in COMPONENTS:
            if _pod_template(base, component) != _pod_template(scaled, component):
                problems.append(
                    f"etcd membership: the {component} pod template depends on the counts"
                )
            if _of(base, "ConfigMap", component) != _of(scaled, "ConfigMap", component):
                problems.append(f"etcd membership: the {component} ConfigMap depends on the counts")
        return "etcd", problems
    if _pod_template(base, "node") == _pod_template(scaled, "node"):
        problems.append(
            "static membership: the node pod template ignores the node count (the node list "
            "should follow it)"
        )
    return "static", problems


def main() -> int:
    paths = sys.argv[1:]
    if not paths or len(paths) % 2:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    failures = 0
    for base, scaled in zip(paths[::2], paths[1::2], strict=True):
        membership, problems = check(_load(base), _load(scaled))
        for problem in problems:
            print(f"FAIL {base}: {problem}")
        if not problems:
            restarts = "nothing restarts" if membership == "etcd" else "gates and nodes restart"
            print(f"ok   {base}: {membership} membership, {restarts} on a scale")
        failures += len(problems)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
