"""TLS pieces in process: roles from SPIFFE ids, half configurations, reloading files."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from goverse.server import Role, TlsFiles, TlsIdentity, spiffe_id
from goverse.server._tls import TlsFilesError, check_tls_flags, role_of
from tests.helpers.certs import SecretDir, TestCA, write_atomically


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


async def test_a_half_copied_pair_is_not_reloaded_and_the_old_one_keeps_working(
    tmp_path: Path,
) -> None:
    """A non-atomic copy read between its two files (the new certificate with the old key),
    or a file cut short, is not taken: the reload raises (logged as "tls files not
    reloaded") and the channels keep presenting the old pair, which still passes a mutual-TLS
    handshake, until the next check reads both new files."""
    ca = TestCA(tmp_path / "pki")
    old, new = ca.issue("gate", "g"), ca.issue("gate", "g", file_stem="new")
    live = TlsFiles(tmp_path / "tls.crt", tmp_path / "tls.key", ca.path)
    write_atomically(live.cert, old.cert.read_bytes())
    write_atomically(live.key, old.key.read_bytes())
    identity = TlsIdentity(live)
    material = identity.material

    write_atomically(live.cert, new.cert.read_bytes())  # the key is still the old one
    with pytest.raises(TlsFilesError, match="does not match"):
        identity.reload()
    write_atomically(live.cert, new.cert.read_bytes()[:200])  # cut short
    with pytest.raises(TlsFilesError, match="not a PEM certificate"):
        identity.reload()
    assert identity.material is material
    assert identity.generation == 0

    node = ca.issue("node", "n")
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    credentials = grpc.ssl_server_credentials(
        [(node.key.read_bytes(), node.cert.read_bytes())],
        root_certificates=ca.pem,
        require_client_auth=True,
    )
    port = server.add_secure_port("localhost:0", credentials)
    await server.start()
    try:
        channel = grpc.aio.secure_channel(f"localhost:{port}", identity.channel_credentials())
        async with channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)

    write_atomically(live.cert, new.cert.read_bytes())
    write_atomically(live.key, new.key.read_bytes())
    assert identity.reload() is True
    assert identity.generation == 1


async def test_an_expired_certificate_is_not_reloaded_and_the_server_keeps_its_valid_one(
    tmp_path: Path,
) -> None:
    """A rotation to an expired certificate (an operator's mistake, a stale copy) is not
    taken: every peer would refuse it. The reload raises and the server's next handshake still
    presents the valid certificate it had."""
    ca = TestCA(tmp_path / "pki")
    valid, expired = ca.issue("node", "n"), ca.issue("node", "n", expired=True, file_stem="old")
    live = TlsFiles(tmp_path / "tls.crt", tmp_path / "tls.key", ca.path)
    write_atomically(live.cert, valid.cert.read_bytes())
    write_atomically(live.key, valid.key.read_bytes())
    identity = TlsIdentity(live)
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port(
        "localhost:0", identity.server_credentials(require_client_cert=True)
    )
    await server.start()
    try:
        write_atomically(live.cert, expired.cert.read_bytes())
        write_atomically(live.key, expired.key.read_bytes())
        with pytest.raises(TlsFilesError, match="has expired"):
            identity.reload()
        gate = ca.issue("gate", "g")
        credentials = grpc.ssl_channel_credentials(
            ca.pem, gate.key.read_bytes(), gate.cert.read_bytes()
        )
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)
