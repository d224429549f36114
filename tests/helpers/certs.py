"""Test certificates: a cluster CA and gate, node and client certificates, written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_DAY = datetime.timedelta(days=1)


@dataclass(frozen=True)
class CertFiles:
    """A certificate and its key as PEM files (what ``--tls-cert`` / ``--tls-key`` take)."""

    cert: Path
    key: Path

    def flags(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key)]


class TestCA:
    """A certificate authority that issues certificates into `directory`.

    ``issue("gate", "gate-1")`` gives a certificate whose URI SAN is
    ``spiffe://goverse/gate/gate-1`` and whose DNS and IP SANs cover localhost, so the
    services' TLS hostname checks pass on loopback.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "goverse test CA") -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _DAY)
            .not_valid_after(now + 30 * _DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        safe = name.replace(" ", "-")
        self.path = directory / f"{safe}.pem"
        self.path.write_bytes(self.pem)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(
        self,
        role: str,
        name: str,
        *,
        expired: bool = False,
        uri: str | None = None,
        file_stem: str | None = None,
        dns: Sequence[str] = (),
    ) -> CertFiles:
        """Issues a certificate for `role`/`name` (URI SAN ``spiffe://goverse/ROLE/NAME``, or
        `uri` verbatim; role ``""`` and no `uri`: no URI SAN), valid for localhost, 127.0.0.1
        and `dns`, and writes it with its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        if expired:
            start, end = now - 10 * _DAY, now - _DAY
        else:
            start, end = now - _DAY, now + 10 * _DAY
        names: list[x509.GeneralName] = [
            *(x509.DNSName(name) for name in dns),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        if uri is None and role:
            uri = f"spiffe://goverse/{role}/{name}"
        if uri is not None:
            names.append(x509.UniformResourceIdentifier(uri))
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        stem = file_stem or f"{role or 'plain'}-{name}"
        files = CertFiles(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")
        write_atomically(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        write_atomically(
            files.key,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        return files


class SecretDir:
    """A directory laid out as Kubernetes mounts a Secret: ``tls.crt`` and ``tls.key`` are
    links into ``..data``, itself a link to a timestamped directory; :meth:`publish` swaps
    ``..data`` in one rename, so a reader never sees a new certificate with an old key."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._versions = 0
        self.files = CertFiles(directory / "tls.crt", directory / "tls.key")

    def publish(self, source: CertFiles) -> None:
        self._versions += 1
        version = self.directory / f"..v{self._versions}"
        version.mkdir()
        (version / "tls.crt").write_bytes(source.cert.read_bytes())
        (version / "tls.key").write_bytes(source.key.read_bytes())
        link = self.directory / "..data.tmp"
        link.symlink_to(version.name)
        os.replace(link, self.directory / "..data")
        for name in ("tls.crt", "tls.key"):
            if not (self.directory / name).is_symlink():
                (self.directory / name).symlink_to(f"..data/{name}")


def write_atomically(path: Path, data: bytes) -> None:
    """Replaces `path` by a rename, as a Secret volume's symlink swap does."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


__all__ = ["CertFiles", "SecretDir", "TestCA", "write_atomically"]
