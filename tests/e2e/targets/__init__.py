"""Where the e2e scenarios run: `local` processes, `docker` containers, a `kind` cluster.

`pytest tests/e2e/test_scenarios.py --target NAME` (or ``GOVERSE_E2E_TARGET=NAME``) picks one;
the default is `local`. docs/deploy.md ("End-to-end tests") says what each target proves.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.targets.base import (
    EXIT_BOUND,
    Component,
    ExportedSpan,
    StopResult,
    Target,
    TargetError,
)

TARGETS = ("local", "docker", "kind")


def make_target(name: str, workdir: Path) -> Target:
    """A target, not started yet. Imports lazily: each target needs only its own tools."""
    if name == "local":
        from tests.e2e.targets.local import LocalTarget

        return LocalTarget(workdir)
    if name == "docker":
        from tests.e2e.targets.docker import DockerTarget

        return DockerTarget(workdir)
    if name == "kind":
        from tests.e2e.targets.kind import KindTarget

        return KindTarget(workdir)
    raise TargetError(f"unknown e2e target {name!r}: one of {', '.join(TARGETS)}")


__all__ = [
    "EXIT_BOUND",
    "TARGETS",
    "Component",
    "ExportedSpan",
    "StopResult",
    "Target",
    "TargetError",
    "make_target",
]
