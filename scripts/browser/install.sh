#!/usr/bin/env bash
# Makes sure a Chromium the browser tests can drive is installed: Debian's `chromium` package
# (Playwright for Python drives it by its path; it cannot download its own browsers here).
# Idempotent. Exit 0 when a Chromium is there afterwards, 1 when it is missing and cannot be
# installed (not root, or apt failed).
#
#   scripts/browser/install.sh          # ensure Chromium is installed
#   scripts/browser/install.sh --check  # only report whether it is (exit 0/1), change nothing
set -euo pipefail

say() { echo "[browser-install] $*" >&2; }

# Where tests/helpers/browser.py looks: $GOVERSE_CHROMIUM, PATH, then /usr/bin/chromium.
found() {
    if [[ -n "${GOVERSE_CHROMIUM:-}" ]]; then
        [[ -x "$GOVERSE_CHROMIUM" ]] && echo "$GOVERSE_CHROMIUM"
        return
    fi
    command -v chromium || command -v chromium-browser ||
        { [[ -x /usr/bin/chromium ]] && echo /usr/bin/chromium; }
}

if [[ "${1:-}" == "--check" ]]; then
    found >/dev/null
    exit
fi

if path="$(found)"; then
    say "chromium present: $path ($("$path" --version 2>/dev/null || echo '?'))"
    exit 0
fi

if [[ "$(id -u)" != 0 ]]; then
    say "chromium is missing and installing it needs root: sudo apt-get install -y chromium"
    exit 1
fi
say "installing Debian's chromium"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
path="$(found)" || { say "apt-get installed chromium but it is not on PATH"; exit 1; }
say "chromium installed: $path"
