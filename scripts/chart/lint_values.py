"""Checks a chart's values: every value documented, and the schema closed to unknown keys.

    python3 scripts/chart/lint_values.py deploy/helm/goverse

values.yaml: a key is documented when the comment block right above it contains `# --`
(helm-docs style), or when one of its ancestors is (a documented map such as `resources` is one
value). Every leaf must be documented.

values.schema.json: every object schema must say what other keys it takes: `false` for the
chart's own objects, a schema for maps (labels, annotations), or be listed in OPEN_OBJECTS,
the Kubernetes types passed through as they are (the API server checks those).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<rest>.*)$")


def undocumented(lines: list[str]) -> list[str]:
    problems = []
    stack: list[tuple[int, str, bool]] = []  # (indent, key, documented)
    comment: list[str] = []
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped)
            continue
        match = KEY.match(line)
        if not match or stripped.startswith("- "):
            comment = [] if not stripped else comment
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = any(c.startswith("# --") for c in comment) or any(d for _, _, d in stack)
        comment = []
        rest = match["rest"].split(" #")[0].strip()
        path = ".".join([k for _, k, _ in stack] + [match["key"]])
        if rest and not documented:
            problems.append(f"line {number}: {path} has no `# --` comment")
        stack.append((indent, match["key"], documented))
    return problems


# Kubernetes objects the chart passes through unchanged (affinity terms, EnvVarSource, the
# HorizontalPodAutoscaler's behavior).
OPEN_OBJECTS = {
    "definitions.affinity.properties.nodeAffinity",
    "definitions.affinity.properties.podAffinity",
    "definitions.affinity.properties.podAntiAffinity",
    "definitions.envVar.properties.valueFrom",
    "definitions.autoscaling.properties.behavior",
}


def open_objects(schema: Any, path: str = "") -> list[str]:
    problems = []
    if isinstance(schema, dict):
        types = schema.get("type")
        is_object = types == "object" or (isinstance(types, list) and "object" in types)
        if is_object and "additionalProperties" not in schema and path not in OPEN_OBJECTS:
            problems.append(f"{path or '(root)'}: object without additionalProperties")
        for key, value in schema.items():
            problems += open_objects(value, f"{path}.{key}" if path else key)
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            problems += open_objects(value, f"{path}.{i}")
    return problems


def main() -> int:
    failures = 0
    for chart in map(Path, sys.argv[1:]):
        problems = undocumented((chart / "values.yaml").read_text().splitlines())
        problems += open_objects(json.loads((chart / "values.schema.json").read_text()))
        for problem in problems:
            print(f"FAIL {chart}: {problem}")
        failures += len(problems)
    print(f"values and schema of {len(sys.argv) - 1} chart(s): {failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
