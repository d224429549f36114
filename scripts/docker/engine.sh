#!/usr/bin/env bash
# Makes sure a Docker engine answers: installs Debian's docker.io when dockerd is missing and
# starts dockerd in the background when no engine runs. Idempotent; prints where the log is.
#
#   scripts/docker/engine.sh          # ensure an engine answers (exit 1 if it cannot be started)
#   scripts/docker/engine.sh --check  # only report whether one answers (exit 0/1), change nothing
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LOG_DIR="${GOVERSE_DOCKER_LOG_DIR:-$ROOT/build/docker}"
START_TIMEOUT="${GOVERSE_DOCKER_START_TIMEOUT:-60}"

say() { echo "[docker-engine] $*" >&2; }

answers() { docker info >/dev/null 2>&1; }
# Processes that are alive: a killed engine may linger as a zombie for a while, which pgrep
# would count. (Not `grep -q`: with pipefail, ps could die of SIGPIPE and read as "dead".)
# shellcheck disable=SC2009,SC2143
dockerd_alive() { [[ -n "$(ps -C dockerd -o stat= 2>/dev/null | grep -v '^Z')" ]]; }
# shellcheck disable=SC2143
pid_alive() { [[ -n "$1" && -n "$(ps -p "$1" -o stat= 2>/dev/null | grep -v '^Z')" ]]; }

if [[ "${1:-}" == "--check" ]]; then
    answers
    exit
fi

if answers; then
    say "engine answers ($(docker version --format '{{.Server.Version}}' 2>/dev/null || echo '?'))"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    if [[ "$(id -u)" != 0 ]]; then
        say "dockerd is missing and installing it needs root: sudo apt-get install -y docker.io"
        exit 1
    fi
    say "installing Debian's docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null
fi
if ! command -v docker >/dev/null 2>&1; then
    say "dockerd is there but no docker client is on PATH"
    exit 1
fi

if [[ "$(id -u)" != 0 ]]; then
    say "no engine answers and starting dockerd needs root"
    exit 1
fi

mkdir -p "$LOG_DIR"
if ! dockerd_alive; then
    # Left behind by an engine that was killed: its socket, its pid file, and the pid file of
    # the containerd it managed (a new dockerd would wait for that containerd forever).
    rm -f /var/run/docker.sock /var/run/docker.pid
    containerd_pid_file=/var/run/docker/containerd/containerd.pid
    if [[ -f "$containerd_pid_file" ]] && ! pid_alive "$(cat "$containerd_pid_file")"; then
        rm -f "$containerd_pid_file"
    fi
fi
if ! dockerd_alive; then
    say "starting dockerd (log: $LOG_DIR/dockerd.log)"
    # setsid: the engine outlives this script and is not hit by the caller's Ctrl-C.
    setsid dockerd >"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
    echo $! >"$LOG_DIR/dockerd.pid"
fi

deadline=$((SECONDS + START_TIMEOUT))
until answers; do
    if ((SECONDS > deadline)); then
        say "dockerd did not answer within ${START_TIMEOUT}s; last lines of its log:"
        tail -n 30 "$LOG_DIR/dockerd.log" >&2 || true
        exit 1
    fi
    sleep 0.5
done
say "engine answers ($(docker version --format '{{.Server.Version}}'))"
