#!/usr/bin/env bash
# Prints the name of a local image with Python 3.11 to build the goverse images FROM, making one
# when none is present. Order: $BASE_IMAGE if set; python:3.11-slim if the engine has it; the
# local image goverse-base:3.11-bookworm, made here when missing from Debian bookworm (whose
# python3 is 3.11) with `debootstrap --variant=minbase` over plain HTTP and `docker import`.
# This is for machines that cannot pull images; ordinary users never need it.
#
#   scripts/docker/base-image.sh            # prints the image name on stdout, logs on stderr
#   scripts/docker/base-image.sh --rebuild  # remakes goverse-base:3.11-bookworm
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OFFICIAL="python:3.11-slim"
LOCAL="${GOVERSE_LOCAL_BASE:-goverse-base:3.11-bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ROOTFS="$ROOT/build/docker/rootfs-$SUITE"

say() { echo "[base-image] $*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }

rebuild=false
[[ "${1:-}" == "--rebuild" ]] && rebuild=true

if [[ -n "${BASE_IMAGE:-}" ]]; then
    have "$BASE_IMAGE" || say "note: $BASE_IMAGE is not present locally; the build will pull it"
    echo "$BASE_IMAGE"
    exit 0
fi
if ! $rebuild && have "$OFFICIAL"; then
    say "using $OFFICIAL"
    echo "$OFFICIAL"
    exit 0
fi
if ! $rebuild && have "$LOCAL"; then
    say "using $LOCAL (made earlier from Debian $SUITE)"
    echo "$LOCAL"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    [[ "$(id -u)" == 0 ]] || { say "debootstrap is missing: sudo apt-get install -y debootstrap"; exit 1; }
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
fi

say "debootstrap $SUITE (minbase + python3, python3-venv) from $MIRROR into $ROOTFS"
rm -rf "$ROOTFS"
mkdir -p "$(dirname "$ROOTFS")"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOT/build/docker/debootstrap.log" 2>&1 \
    || { tail -n 30 "$ROOT/build/docker/debootstrap.log" >&2; exit 1; }

# What an image needs no copy of: package lists and caches, documentation, translations of
# program messages (the services log in English; C.UTF-8 is built into libc), logs.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/usr/share/locale/* \
    "$ROOTFS"/var/log/* "$ROOTFS"/tmp/*
version="$(chroot "$ROOTFS" python3 -c 'import platform; print(platform.python_version())')"
say "Python $version in the root filesystem; importing it as $LOCAL"

old="$(docker image inspect --format '{{.Id}}' "$LOCAL" 2>/dev/null || true)"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase $SUITE + python3 $version" \
    - "$LOCAL" >/dev/null
rm -rf "$ROOTFS"
# The image this one replaced (--rebuild), unless something still uses it.
if [[ -n "$old" ]]; then
    docker rmi "$old" >/dev/null 2>&1 || true
fi
say "made $LOCAL"
echo "$LOCAL"
