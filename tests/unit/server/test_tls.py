"""TLS pieces in process: roles from SPIFFE ids, half configurations, reloading files."""

from __future__ import annotations

from pathlib import Path

import pytest

from goverse.server import Role, TlsFiles, TlsIdentity, spiffe_id
from goverse.server._tls import TlsFilesError, check_tls_flags, role_of
from tests.helpers.certs import SecretDir, TestCA


@pytest.mark.parametrize(
    ("uri", "role"),
    [
        ("spiffe://goverse/gate/gate-1", Role.GATE),
        ("spiffe://goverse/node/node-0.nodes.ns", Role.NODE),
        ("spiffe://goverse/client/alice", None),
        ("spiffe://goverse/gate/", None),
        ("spiffe://goverse/gate", None),
        ("spiffe://other/gate/gate-1", None),
        ("https://goverse/gate/gate-1", None),
        ("", None),
    ],
)
def test_the_role_a_spiffe_id_names(uri: str, role: Role | None) -> None:
    """Only ``spiffe://goverse/gate/NAME`` and ``spiffe://goverse/node/NAME`` carry a role."""
    assert role_of(uri) is role


def test_spiffe_id_round_trips() -> None:
    assert role_of(spiffe_id(Role.NODE, "n1")) is Role.NODE


def test_half_a_tls_configuration_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="--tls-cert given without --tls-key, --tls-ca"):
        check_tls_flags(Path("c"), None, None)
    check_tls_flags(None, None, None)
    check_tls_flags(Path("c"), Path("k"), Path("ca"))


def test_reload_sees_a_swapped_secret_and_keeps_the_old_files_when_unreadable(
    tmp_path: Path,
) -> None:
    """A reload notices changed files (a Secret's symlink swap) and bumps the generation; an
    unreadable file raises and leaves the material as it was."""
    ca = TestCA(tmp_path / "pki")
    secret = SecretDir(tmp_path / "secret")
    secret.publish(ca.issue("node", "n1"))
    identity = TlsIdentity(TlsFiles(secret.files.cert, secret.files.key, ca.path))
    assert identity.reload() is False
    secret.publish(ca.issue("node", "n1", file_stem="again"))
    assert identity.reload() is True
    assert identity.generation == 1
    material = identity.material
    secret.files.cert.unlink()
    with pytest.raises(TlsFilesError):
        identity.reload()
    assert identity.material is material
