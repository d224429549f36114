#!/usr/bin/env bash
# Removes what e2e docker runs left behind when they were killed (a normal run, a failed one or
# Ctrl-C removes its own): every container and network labelled io.goverse.e2e=1.
# Careful: that includes those of a docker run going on right now.
set -euo pipefail
containers="$(docker ps --all --quiet --filter label=io.goverse.e2e=1)"
if [[ -n "$containers" ]]; then
    # shellcheck disable=SC2086
    docker rm --force --volumes $containers >/dev/null
    echo "[e2e-docker-clean] removed $(wc -w <<<"$containers") container(s)"
fi
networks="$(docker network ls --quiet --filter label=io.goverse.e2e=1)"
if [[ -n "$networks" ]]; then
    # shellcheck disable=SC2086
    docker network rm $networks >/dev/null
    echo "[e2e-docker-clean] removed $(wc -w <<<"$networks") network(s)"
fi
