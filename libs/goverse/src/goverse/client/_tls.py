"""ClientTLS: how the SDK verifies gates over TLS and, optionally, which certificate it shows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

PemSource = bytes | str | Path
"""PEM content (bytes) or the path of a PEM file (str or Path)."""


def _pem(source: PemSource | None) -> bytes | None:
    if source is None or isinstance(source, bytes):
        return source
    return Path(source).read_bytes()


@dataclass(frozen=True)
class ClientTLS:
    """TLS settings of a :class:`~goverse.client.Client`.

    ``ClientTLS(ca="/etc/goverse/ca.pem")`` verifies the gates' certificate against that CA;
    with no `ca` the system's roots are used (a gate with a public certificate). `cert` and
    `key` go together: a client certificate, for a gate behind something that asks for one
    (goverse gates do not; clients authenticate with tokens). Each is PEM bytes or a file
    path; files are read when the client is made.
    """

    ca: PemSource | None = None
    """CA the gates' certificates chain to (None: the system's roots)."""
    cert: PemSource | None = None
    """Client certificate chain, presented to the gate (optional)."""
    key: PemSource | None = None
    """Private key of `cert`."""
    server_name: str | None = None
    """Name checked against the gate's certificate instead of the host dialled (an address
    that is not in the certificate, such as an IP behind a load balancer)."""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("ClientTLS: cert and key go together")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials these settings make (reads the files)."""
        return grpc.ssl_channel_credentials(
            root_certificates=_pem(self.ca),
            private_key=_pem(self.key),
            certificate_chain=_pem(self.cert),
        )

    def channel_options(self) -> list[tuple[str, str]]:
        """Channel options these settings add (the name override)."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


__all__ = ["ClientTLS", "PemSource"]
