"""TLS of a service: its certificate files, the credentials made of them, their reloading when
the files change, and the role (gate or node) a peer's certificate proves.

Roles: a goverse certificate carries exactly one URI SAN, a SPIFFE id
``spiffe://goverse/gate/NAME`` or ``spiffe://goverse/node/NAME``; grpc exposes it as the
``peer_spiffe_id`` property of ``context.auth_context()`` (grpc 1.85 sets it only when the
certificate has exactly one URI SAN and it is a valid SPIFFE id). "Of this cluster" is the CA
the certificate chains to (``--tls-ca``): the handshake checks that before any handler runs.
See ``docs/security.md``.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import structlog
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from goverse.server._lifecycle import StartupError

log = structlog.get_logger(__name__)

TRUST_DOMAIN = "goverse"
"""The SPIFFE trust domain of goverse certificates: ``spiffe://goverse/ROLE/NAME``."""
_AUTH_SPIFFE = "peer_spiffe_id"
_AUTH_CERT = "x509_pem_cert"


class Role(enum.StrEnum):
    """What a peer's certificate says it is."""

    GATE = "gate"
    NODE = "node"


def spiffe_id(role: Role, name: str) -> str:
    """The URI SAN a certificate of `role` carries, e.g. ``spiffe://goverse/gate/gate-1``."""
    return f"spiffe://{TRUST_DOMAIN}/{role}/{name}"


def role_of(spiffe: str) -> Role | None:
    """The role a SPIFFE id names (``spiffe://goverse/ROLE/NAME``); None for anything else."""
    prefix = f"spiffe://{TRUST_DOMAIN}/"
    if not spiffe.startswith(prefix):
        return None
    role, _, name = spiffe.removeprefix(prefix).partition("/")
    if not name:
        return None
    try:
        return Role(role)
    except ValueError:
        return None


def check_tls_flags(cert: Path | None, key: Path | None, ca: Path | None) -> None:
    """Refuses half a TLS configuration (ValueError naming the flags): --tls-cert, --tls-key
    and --tls-ca go together (a service both serves and dials its peers with them)."""
    given = {"--tls-cert": cert, "--tls-key": key, "--tls-ca": ca}
    missing = [flag for flag, value in given.items() if value is None]
    if missing and len(missing) < len(given):
        present = [flag for flag in given if flag not in missing]
        raise ValueError(
            f"{', '.join(present)} given without {', '.join(missing)}: TLS needs --tls-cert, "
            "--tls-key and --tls-ca together"
        )


def check_pair(cert_flag: str, cert: Path | None, key_flag: str, key: Path | None) -> None:
    """Refuses a certificate without its key or a key without its certificate."""
    if (cert is None) != (key is None):
        given, other = (cert_flag, key_flag) if key is None else (key_flag, cert_flag)
        raise ValueError(f"{given} given without {other}: they go together")


class TlsFilesError(StartupError):
    """A TLS file cannot be read."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: a certificate chain, its key and, when peers are verified, the CA."""

    cert: Path
    key: Path
    ca: Path | None = None


@dataclass(frozen=True)
class KeyMaterial:
    """The bytes of a :class:`TlsFiles` read at one moment."""

    cert: bytes
    key: bytes
    ca: bytes | None

    @classmethod
    def read(cls, files: TlsFiles) -> KeyMaterial:
        """Reads `files`; raises :class:`TlsFilesError` naming the one that cannot be read or
        used: not PEM (cut short by a copy), a key that is not the certificate's (a copy read
        between its two files), or an expired certificate. grpc would take such files and
        fail every handshake (or every peer would)."""

        def load(path: Path) -> bytes:
            try:
                return path.read_bytes()
            except OSError as error:
                raise TlsFilesError(f"cannot read TLS file {path}: {error}") from error

        def certificates(path: Path, pem: bytes) -> list[x509.Certificate]:
            try:
                return x509.load_pem_x509_certificates(pem)
            except ValueError as error:
                raise TlsFilesError(f"TLS file {path} is not a PEM certificate: {error}") from None

        ca = None
        if files.ca is not None:
            ca = load(files.ca)
            certificates(files.ca, ca)
        cert, key = load(files.cert), load(files.key)
        try:
            private_key = load_pem_private_key(key, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            raise TlsFilesError(f"TLS file {files.key} is not a PEM private key: {error}") from None
        leaf = certificates(files.cert, cert)[0]
        if private_key.public_key() != leaf.public_key():
            raise TlsFilesError(
                f"TLS file {files.key} does not match the certificate of {files.cert}"
            )
        if leaf.not_valid_after_utc <= datetime.now(UTC):
            raise TlsFilesError(
                f"TLS file {files.cert} has expired (valid until "
                f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC): every peer would refuse it"
            )
        return cls(cert=cert, key=key, ca=ca)


class TlsIdentity:
    """One certificate, key and CA, re-read by :meth:`reload` when the files change.

    Servers get dynamic credentials (:meth:`server_credentials`): grpc asks for the current
    certificate at each new handshake, so a reload reaches the next connection without a
    restart. Channel credentials are fixed once made (:meth:`channel_credentials`): a channel
    presents a rotated client certificate only when it is made anew (see ChannelPool.rotate).
    """

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self.material = KeyMaterial.read(files)
        self.generation = 0
        """Bumped by every reload that changed the material."""

    def reload(self) -> bool:
        """Re-reads the files; True when they changed. Raises TlsFilesError (the old
        material stays) when one cannot be read, e.g. in the middle of a non-atomic copy."""
        material = KeyMaterial.read(self.files)
        if material == self.material:
            return False
        self.material = material
        self.generation += 1
        return True

    def _server_config(self) -> Any:
        return grpc.ssl_server_certificate_configuration(
            [(self.material.key, self.material.cert)], root_certificates=self.material.ca
        )

    def server_credentials(self, *, require_client_cert: bool) -> grpc.ServerCredentials:
        """Credentials of a server presenting this identity; with `require_client_cert`, a
        client must present a certificate chaining to the CA (mutual TLS)."""
        served = self.generation

        def fetch() -> Any:
            # Called by grpc at each handshake (possibly off the event loop): cheap, no I/O.
            nonlocal served
            if served == self.generation:
                return None  # keep the current configuration
            served = self.generation
            return self._server_config()

        return grpc.dynamic_ssl_server_credentials(
            self._server_config(), fetch, require_client_authentication=require_client_cert
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Mutual-TLS credentials of a channel: the server must chain to the CA, and this
        identity's certificate is presented as the client certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.material.ca,
            private_key=self.material.key,
            certificate_chain=self.material.cert,
        )


class ServiceTls:
    """The TLS of one service process.

    `peer` is its identity towards other goverse services (and the CA they must chain to):
    the client certificate of its channels. `listener` is what its server presents, and with
    `require_client_cert` its server admits only clients with a certificate of the CA (a node);
    a gate's listener faces clients, who authenticate otherwise.
    """

    def __init__(
        self,
        peer: TlsIdentity,
        listener: TlsIdentity | None = None,
        *,
        require_client_cert: bool,
    ) -> None:
        self.peer = peer
        self.listener = peer if listener is None else listener
        self.require_client_cert = require_client_cert

    def identities(self) -> list[TlsIdentity]:
        return [self.peer] if self.listener is self.peer else [self.peer, self.listener]

    def server_credentials(self) -> grpc.ServerCredentials:
        return self.listener.server_credentials(require_client_cert=self.require_client_cert)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return self.peer.channel_credentials()

    async def watch(
        self,
        interval: timedelta,
        on_peer_rotated: Callable[[grpc.ChannelCredentials], Awaitable[None]],
    ) -> None:
        """Checks the files every `interval` until cancelled (a supervised task): a changed
        listener identity reaches the server's next handshake by itself; a changed peer
        identity is handed to `on_peer_rotated` as new channel credentials."""
        while True:
            await asyncio.sleep(interval.total_seconds())
            for identity in self.identities():
                try:
                    changed = identity.reload()
                except TlsFilesError as error:
                    log.warning("tls files not reloaded", error=str(error))
                    continue
                if not changed:
                    continue
                log.info(
                    "tls files reloaded",
                    cert=str(identity.files.cert),
                    generation=identity.generation,
                )
                if identity is self.peer:
                    await on_peer_rotated(self.channel_credentials())


@dataclass(frozen=True)
class Peer:
    """Who called, as far as TLS says: the role and SPIFFE id of its certificate. In
    plaintext both are unknown (role None, identity "")."""

    role: Role | None
    identity: str


PLAINTEXT_PEER = Peer(role=None, identity="")


def peer_of(context: grpc.aio.ServicerContext) -> Peer | None:
    """The peer of a call served over TLS; None when it presented no certificate."""
    auth: dict[str, list[bytes]] = context.auth_context()
    if not auth.get(_AUTH_CERT):
        return None
    spiffe = b"".join(auth.get(_AUTH_SPIFFE, [])).decode(errors="replace")
    return Peer(role=role_of(spiffe), identity=spiffe)


class PeerCheck:
    """Admits a call by the role its peer's certificate proves (with TLS on); in plaintext
    every peer is admitted and unknown (:data:`PLAINTEXT_PEER`)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    async def require(
        self, context: grpc.aio.ServicerContext, roles: Collection[Role], what: str
    ) -> Peer:
        """The peer of the call, when its role is in `roles`; else aborts the call:
        UNAUTHENTICATED without a certificate, PERMISSION_DENIED with one of another role."""
        if not self.enabled:
            return PLAINTEXT_PEER
        peer = peer_of(context)
        if peer is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"{what} needs a client certificate"
            )
            raise AssertionError("context.abort returned")  # abort always raises
        if peer.role not in roles:
            allowed = " or ".join(sorted(roles))
            log.warning("peer refused", what=what, peer=peer.identity or "no spiffe id")
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{what} is for a {allowed} certificate; the peer's is "
                f"{peer.identity or 'without a goverse SPIFFE id'}",
            )
            raise AssertionError("context.abort returned")
        return peer


__all__ = [
    "PLAINTEXT_PEER",
    "TRUST_DOMAIN",
    "KeyMaterial",
    "Peer",
    "PeerCheck",
    "Role",
    "ServiceTls",
    "TlsFiles",
    "TlsFilesError",
    "TlsIdentity",
    "check_pair",
    "check_tls_flags",
    "peer_of",
    "role_of",
    "spiffe_id",
]
