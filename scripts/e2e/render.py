"""Renders the chart with `helm template` and prints the manifests as one JSON list.

    build/tools/venv/bin/python scripts/e2e/render.py HELM RELEASE CHART [HELM ARGS...]

Run with the chart tools' Python (it has PyYAML); the e2e docker target reads the JSON, so
the test process needs no YAML parser. Empty documents are left out. Exits with helm's code
and its error output when rendering fails.
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml  # type: ignore[import-untyped, unused-ignore]  # in build/tools/venv


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    helm, release, chart, *rest = argv
    rendered = subprocess.run(
        [helm, "template", release, chart, *rest], capture_output=True, text=True, check=False
    )
    if rendered.returncode != 0:
        sys.stderr.write(rendered.stderr)
        return rendered.returncode
    documents = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    json.dump(documents, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
