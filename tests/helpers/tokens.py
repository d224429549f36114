"""TokenIssuer: HS256 client tokens for tests, and the gate flags that verify them."""

from __future__ import annotations

import itertools
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt

AUDIENCE = "goverse-tests"
ISSUER = "https://issuer.goverse.test"


@dataclass
class TokenIssuer:
    """Signs tokens that gates started with :meth:`gate_flags` accept, and counts them."""

    secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    lifetime_s: float = 300.0
    issued: int = 0
    _serial: itertools.count[int] = field(default_factory=itertools.count)

    def token(self, subject: str = "tester", **claims: object) -> str:
        """A fresh token for `subject` with `claims` added (each one unique: a ``jti``)."""
        self.issued += 1
        payload = {
            "sub": subject,
            "aud": AUDIENCE,
            "iss": ISSUER,
            "exp": int(time.time() + self.lifetime_s),
            "jti": str(next(self._serial)),
            **claims,
        }
        return jwt.encode(payload, self.secret, algorithm="HS256")

    def gate_flags(self, directory: Path) -> tuple[str, ...]:
        """The flags of a gate that requires these tokens; writes the secret file in
        `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "jwt-secret"
        path.write_text(self.secret)
        return (
            "--authenticator=jwt",
            f"--jwt-secret-file={path}",
            f"--jwt-audience={AUDIENCE}",
            f"--jwt-issuer={ISSUER}",
        )
