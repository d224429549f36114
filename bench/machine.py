"""What the machine of a run is: cores, CPU model, memory, load, and the versions that matter."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.procs import ROOT, UVLOOP_DIR


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return 0


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _uvloop_version() -> str:
    found = sorted(UVLOOP_DIR.glob("uvloop-*.dist-info"))
    return found[-1].name.removeprefix("uvloop-").removesuffix(".dist-info") if found else "absent"


def _git() -> dict[str, Any]:
    """The commit measured, and the files changed on top of it (the work tree is measured)."""

    def run(*args: str) -> str:
        try:
            done = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.rstrip("\n")

    changed = [
        line[3:]
        for line in run("status", "--porcelain", "--", "libs", "services").splitlines()
        if line
    ]
    return {"commit": run("rev-parse", "HEAD"), "uncommitted_service_files": changed}


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def describe() -> dict[str, Any]:
    """The machine and software of this run, for the results file."""
    return {
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "memory_mib": _mem_total_mib(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "grpcio": _version("grpcio"),
        "protobuf": _version("protobuf"),
        "structlog": _version("structlog"),
        "opentelemetry-sdk": _version("opentelemetry-sdk"),
        "uvloop_for_services": _uvloop_version(),
        "uvloop_in_venv": _version("uvloop"),
        "git": _git(),
        "load_average_at_start": load_average(),
    }
