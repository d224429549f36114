#!/usr/bin/env bash
# What .ci/run calls after `make test`: the e2e scenarios on Docker (`make e2e-docker`) when a
# Docker engine answers or can be started here (scripts/docker/engine.sh installs Debian's
# docker.io and starts dockerd when it is root), and a banner nobody can miss when it cannot.
# Exits with make's status when the run happened, 0 when it could not happen.
set -euo pipefail
cd "$(dirname "$0")/../.."

banner() {
    local line="################################################################################"
    printf '\n%s\n#\n' "$line" >&2
    local text
    for text in "$@"; do
        printf '#   %s\n' "$text" >&2
    done
    printf '#\n%s\n\n' "$line" >&2
}

if ! scripts/docker/engine.sh; then
    banner "E2E ON DOCKER DID NOT RUN: no Docker engine answers and none could be started." \
        "The images, the chart's wiring in containers and the gate stop budget in a" \
        "container are UNTESTED by this run. Log: build/docker/dockerd.log." \
        "Run 'make e2e-docker' on a machine with Docker."
    exit 0
fi
make e2e-docker
