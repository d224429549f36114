#!/usr/bin/env bash
# Builds the gate and node images on this machine: starts a Docker engine if none runs
# (engine.sh), finds or makes a Python 3.11 base image (base-image.sh), downloads a wheelhouse
# on the host (wheelhouse.sh) and builds both images from it, with no network access needed
# inside the build. Tags: goverse-gate:<version>, goverse-node:<version> (the chart's default
# tag) and :latest. Prints the image sizes at the end.
#
#   scripts/docker/build.sh                 # what `make images` runs
#   BASE_IMAGE=python:3.11-slim scripts/docker/build.sh
#   WHEELHOUSE= scripts/docker/build.sh     # no wheelhouse: pip in the build uses the index
#   GOVERSE_IMAGE_PREFIX=registry.example/goverse- scripts/docker/build.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
HERE=scripts/docker
PREFIX="${GOVERSE_IMAGE_PREFIX:-goverse-}"
WHEELHOUSE="${WHEELHOUSE-build/wheelhouse}"

say() { echo "[images] $*" >&2; }

"$HERE/engine.sh"
base="$("$HERE/base-image.sh")"
version="$(python3 -c 'import tomllib; print(tomllib.load(open("services/gate/pyproject.toml", "rb"))["project"]["version"])')"

build_args=(--build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version")
if [[ -n "$WHEELHOUSE" ]]; then
    "$HERE/wheelhouse.sh" "$WHEELHOUSE"
    build_args+=(--build-arg "WHEELHOUSE=$WHEELHOUSE")
fi

mkdir -p build/docker
started=$SECONDS
for service in node gate; do
    image="${PREFIX}${service}"
    say "building $image:$version from $base${WHEELHOUSE:+ with wheelhouse $WHEELHOUSE}"
    log="build/docker/build-$service.log"
    if ! docker build "${build_args[@]}" \
        --file "services/$service/Dockerfile" \
        --tag "$image:$version" --tag "$image:latest" \
        . >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        say "building $image failed; the whole output is in $log"
        exit 1
    fi
done
say "built in $((SECONDS - started))s"
docker images --format 'table {{.Repository}}:{{.Tag}}\t{{.ID}}\t{{.Size}}' \
    | grep -E "^(REPOSITORY|${PREFIX}(gate|node):|${base%%:*}:)" >&2
