"""The light `goverse` distribution: what importing the SDK loads, and what it depends on."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys

import pytest

HEAVY = (
    "opentelemetry.sdk",
    "opentelemetry.exporter",
    "opentelemetry.instrumentation",
    "prometheus_client",
    "structlog",
    "goverse.server",
)
"""Packages only the services need. (``grpc_health`` is not among them: ``import grpc``
imports it by itself whenever it is installed.)"""

LIGHT_REQUIREMENTS = {"grpcio", "protobuf", "opentelemetry-api"}


def heavy_modules_after_import(module: str) -> list[str]:
    """The heavy modules loaded once `module` is imported by a fresh interpreter."""
    script = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    # OTEL_* variables can make the OpenTelemetry API load an SDK on first use.
    environ = {key: value for key, value in os.environ.items() if not key.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
        check=True,
    )
    loaded: list[str] = json.loads(result.stdout)
    return [name for name in loaded if any(name == p or name.startswith(p + ".") for p in HEAVY)]


@pytest.mark.parametrize(
    "module",
    ["goverse.client", "goverse.objects", "goverse.testing", "goverse.descriptions", "goverse.cli"],
)
def test_the_sdk_imports_nothing_the_services_need(module: str) -> None:
    """Importing what applications and object authors use loads no OpenTelemetry SDK,
    exporter or instrumentation, no prometheus_client, no structlog and no goverse.server."""
    assert heavy_modules_after_import(module) == []


def test_the_check_sees_what_the_server_package_loads() -> None:
    """The check is not vacuous: goverse.server brings structlog and the OpenTelemetry SDK."""
    heavy = heavy_modules_after_import("goverse.server")
    assert "structlog" in heavy
    assert "opentelemetry.sdk" in heavy


def test_the_distribution_requires_only_the_light_set() -> None:
    """`goverse` declares exactly grpcio, protobuf and opentelemetry-api."""
    requirements = importlib.metadata.requires("goverse") or []
    names = set()
    for requirement in requirements:
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
        assert match is not None, requirement
        names.add(re.sub(r"[-_.]+", "-", match.group()).lower())
    assert names == LIGHT_REQUIREMENTS
