"""The gate package: what it exports, and that `goverse` stays a namespace package."""

from __future__ import annotations

from pathlib import Path

import goverse.gate


def test_public_names() -> None:
    """The facade exports exactly the gate's public interface, and every name resolves."""
    assert sorted(goverse.gate.__all__) == [
        "Authenticator",
        "Catalog",
        "ClientProxy",
        "ClientRegistry",
        "Credentials",
        "GateApp",
        "GateConfig",
        "GateService",
        "LinkState",
        "NodeLink",
        "Router",
        "parse_config",
    ]
    for name in goverse.gate.__all__:
        assert getattr(goverse.gate, name) is not None


def test_goverse_is_a_namespace_package_in_the_gate_distribution() -> None:
    """services/gate/src/goverse has no __init__.py, so goverse.v1 & co. still import."""
    package_dir = Path(goverse.gate.__file__).parent
    assert not (package_dir.parent / "__init__.py").exists()
