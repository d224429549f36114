"""Where the e2e scenarios run: `local` processes, `docker` containers, a `kind` cluster.

`pytest tests/e2e/test_scenarios.py --target NAME` (or ``GOVERSE_E2E_TARGET=NAME``) picks one;
the default is `local`. docs/deploy.md ("End-to-end tests") says what each target proves.
`--security on|off` picks TLS on every hop with JWT client authentication, or plaintext; the
local and docker targets run secured, and do by default; kind runs plaintext only so far.
"""

from __future__ import annotations

from pathlib import Path

from tests.e2e.targets.base import (
    EXIT_BOUND,
    MEMBERSHIPS,
    Component,
    ExportedSpan,
    Membership,
    Plaintext,
    StopResult,
    Target,
    TargetError,
)

TARGETS = ("local", "docker", "kind")
SECURED_TARGETS = ("local", "docker")
"""The targets that can run secured (TLS + JWT); each of them does unless told otherwise."""


def make_target(
    name: str,
    workdir: Path,
    membership: Membership = MEMBERSHIPS[0],
    secured: bool | None = None,
) -> Target:
    """A target, not started yet, whose services run on `membership` (the kind target runs
    what the release installed), secured or not (None: secured where the target can be,
    :data:`SECURED_TARGETS`). Imports lazily: each target needs only its own tools."""
    if secured is None:
        secured = name in SECURED_TARGETS
    if secured and name not in SECURED_TARGETS:
        raise TargetError(
            f"the {name} target runs plaintext only (no TLS certificates or JWT secret are "
            "mounted into its services yet): run it with --security off"
        )
    if name == "local":
        from tests.e2e.targets.local import LocalTarget

        return LocalTarget(workdir, membership, secured=secured)
    if name == "docker":
        from tests.e2e.targets.docker import DockerTarget

        return DockerTarget(workdir, membership=membership, secured=secured)
    if name == "kind":
        from tests.e2e.targets.kind import KindTarget

        return KindTarget(workdir)
    raise TargetError(f"unknown e2e target {name!r}: one of {', '.join(TARGETS)}")


__all__ = [
    "EXIT_BOUND",
    "MEMBERSHIPS",
    "SECURED_TARGETS",
    "TARGETS",
    "Component",
    "ExportedSpan",
    "Membership",
    "Plaintext",
    "StopResult",
    "Target",
    "TargetError",
    "make_target",
]
