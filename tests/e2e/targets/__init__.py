"""Where the e2e scenarios run: `local` processes, `docker` containers, a `kind` cluster.

`pytest tests/e2e/test_scenarios.py --target NAME` (or ``GOVERSE_E2E_TARGET=NAME``) picks one;
the default is `local`. docs/deploy.md ("End-to-end tests") says what each target proves.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.targets.base import (
    EXIT_BOUND,
    MEMBERSHIPS,
    Component,
    ExportedSpan,
    Membership,
    StopResult,
    Target,
    TargetError,
)

TARGETS = ("local", "docker", "kind")


def make_target(name: str, workdir: Path, membership: Membership = MEMBERSHIPS[0]) -> Target:
    """A target, not started yet, whose services run on `membership` (the kind target runs
    what the release installed). Imports lazily: each target needs only its own tools."""
    if name == "local":
        from tests.e2e.targets.local import LocalTarget

        return LocalTarget(workdir, membership)
    if name == "docker":
        from tests.e2e.targets.docker import DockerTarget

        return DockerTarget(workdir, membership=membership)
    if name == "kind":
        from tests.e2e.targets.kind import KindTarget

        return KindTarget(workdir)
    raise TargetError(f"unknown e2e target {name!r}: one of {', '.join(TARGETS)}")


__all__ = [
    "EXIT_BOUND",
    "MEMBERSHIPS",
    "TARGETS",
    "Component",
    "ExportedSpan",
    "Membership",
    "StopResult",
    "Target",
    "TargetError",
    "make_target",
]
