"""Checks that a chart version bump restarts no pod: the pod templates do not change.

    build/tools/venv/bin/python scripts/chart/bump.py BASE BUMPED [BASE BUMPED ...]

BASE is a `helm template` output; BUMPED the same values rendered from a copy of the chart
whose `version` check.sh changed. A pod restarts when its pod template changes, so every pod
template (Deployments, StatefulSets) must be the same in both: no helm.sh/chart label on pod
templates, and a `checksum/config` that hashes a ConfigMap's data, not its labels. The non-pod
objects must show the new version in their helm.sh/chart label, so the check cannot pass
because the bump did not apply.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]  # in build/tools/venv

Resource = dict[str, Any]
WORKLOADS = ("Deployment", "StatefulSet")


def _load(path: str) -> list[Resource]:
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def _templates(resources: list[Resource]) -> dict[str, Any]:
    return {
        f"{r['kind']}/{r['metadata']['name']}": r["spec"]["template"]
        for r in resources
        if r["kind"] in WORKLOADS
    }


def _chart_labels(resources: list[Resource]) -> set[str]:
    return {r["metadata"].get("labels", {}).get("helm.sh/chart", "") for r in resources}


def check(base: list[Resource], bumped: list[Resource]) -> list[str]:
    problems = []
    if _chart_labels(base) == _chart_labels(bumped):
        problems.append("the renderings have the same helm.sh/chart labels: the bump did not apply")
    before, after = _templates(base), _templates(bumped)
    if before.keys() != after.keys():
        problems.append(f"the bump changes the workloads: {sorted(before)} -> {sorted(after)}")
    for name in sorted(before.keys() & after.keys()):
        if before[name] != after[name]:
            problems.append(f"{name}: the pod template changes with the chart version")
        if "helm.sh/chart" in before[name].get("metadata", {}).get("labels", {}):
            problems.append(f"{name}: the pod template carries helm.sh/chart")
    return problems


def main() -> int:
    paths = sys.argv[1:]
    if not paths or len(paths) % 2:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    failures = 0
    for base, bumped in zip(paths[::2], paths[1::2], strict=True):
        problems = check(_load(base), _load(bumped))
        for problem in problems:
            print(f"FAIL {base}: {problem}")
        if not problems:
            print(f"ok   {base}: a chart bump changes no pod template")
        failures += len(problems)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
