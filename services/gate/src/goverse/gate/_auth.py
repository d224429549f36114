"""Client authentication: who a registering client is, decided once from its bearer token.

A gate runs one :class:`Authenticator` (``--authenticator``) for every registration (a
Register or Session stream), before the registration takes a slot. Built in:

- ``none`` (:class:`NoAuthenticator`): every client is anonymous (no principal), as before
  authentication existed; the embedded default.
- ``jwt`` (:class:`JwtAuthenticator`): the ``authorization: Bearer <token>`` metadata must be
  a JWT that PyJWT verifies with the configured key (an HS256 secret, an RS256/ES256 public
  key, or a JWKS), unexpired and for the configured audience and issuer; the principal is its
  ``sub`` and the claims named by ``--jwt-claims``.
- ``module:attr``: an object of the user's (an instance, or a class built with no
  arguments) with ``async def authenticate(self, credentials: Credentials) -> Principal |
  None``; it refuses a client by raising :class:`~goverse.errors.Unauthenticated`.

A session lasts no longer than its credential: an authenticator that also has
``authenticate_session`` (:class:`SessionAuthenticator`; ``jwt`` has it) says when the
credential expires (:class:`Admission`), and :func:`session_expiry` ends the registration
then (UNAUTHENTICATED, close reason ``token_expired``) with one timer per session, nothing per
call. The client registers again with a fresh token.

A refusal is an :class:`AuthenticationFailed` whose :attr:`~AuthenticationFailed.reason` is
a short fixed word (metric attribute and log field); its message, which the client sees,
never contains the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from opentelemetry import trace

from goverse import wire
from goverse.errors import ResourceExhausted, Unauthenticated, Unavailable
from goverse.gate._client_proxy import ClientProxy
from goverse.gate._peer_limits import PeerLimits
from goverse.objects import Principal
from goverse.server import ENDUSER_ID, StartupError
from goverse.v1 import node_pb2

BEARER = "bearer"

DEFAULT_LEEWAY_S = 30.0
"""Clock skew tolerated on ``exp``/``nbf``/``iat`` between the token's issuer and the gate."""


log = structlog.get_logger(__name__)


class AuthenticationFailed(Unauthenticated):
    """A registration refused by the authenticator; `reason` names why in one fixed word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class AuthenticatorError(StartupError):
    """An authenticator that cannot be set up from the gate's settings (exit status 2)."""


@dataclass(frozen=True)
class Credentials:
    """What a client presented when it registered."""

    token: str | None
    """The bearer token of the ``authorization`` metadata; None when there is none."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    """The registration's text metadata (binary values left out)."""
    peer: str = ""
    """The client's address as gRPC names it (``ipv4:10.0.0.7:51234``)."""


@runtime_checkable
class Authenticator(Protocol):
    """Decides who a registering client is."""

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        """The client's principal, or None for an anonymous client; raises
        :class:`~goverse.errors.Unauthenticated` to refuse the registration."""
        ...


@dataclass(frozen=True)
class Admission:
    """Who an admitted client is, and until when its credential is valid."""

    principal: Principal | None
    """The client's principal; None for an anonymous client."""
    expires_at: float | None = None
    """When the credential stops being valid, in :func:`time.time` seconds (for a JWT: its
    ``exp`` plus the tolerated clock skew, the moment the gate would refuse the token): the
    gate ends the session then. None: the session lasts until it ends otherwise."""


@runtime_checkable
class SessionAuthenticator(Protocol):
    """An authenticator whose credentials expire: the gate ends a session when its
    credential does (:func:`session_expiry`)."""

    async def authenticate_session(self, credentials: Credentials) -> Admission:
        """The client's :class:`Admission`; raises :class:`~goverse.errors.Unauthenticated`
        to refuse it, as :meth:`Authenticator.authenticate` does."""
        ...


def bearer_token(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of ``authorization: Bearer <token>`` in `metadata`; None when absent."""
    for key, value in metadata or ():
        if key != wire.AUTHORIZATION_KEY or not isinstance(value, str):
            continue
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() == BEARER and token.strip():
            return token.strip()
    return None


def credentials_of(metadata: Sequence[tuple[str, Any]] | None, peer: str) -> Credentials:
    """The credentials of a registration from its invocation metadata and peer."""
    text = {key: value for key, value in metadata or () if isinstance(value, str)}
    return Credentials(bearer_token(metadata), text, peer)


class NoAuthenticator:
    """Every client is anonymous: the behaviour of a gate without authentication."""

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        return None


@dataclass(frozen=True)
class JwtKeys:
    """The verification keys of :class:`JwtAuthenticator`: exactly one of a secret (HS256),
    a public key (RS256 or ES256, by its type) or a JWKS (keys chosen by the token's ``kid``)."""

    secret: bytes | None = None
    public_key: Any = None
    jwks: jwt.PyJWKSet | None = None

    @classmethod
    def from_files(
        cls, secret_file: Path | None, public_key_file: Path | None, jwks_file: Path | None
    ) -> JwtKeys:
        """Reads the one configured key file; raises :class:`AuthenticatorError` naming the
        flag when it cannot be read or parsed."""
        try:
            if secret_file is not None:
                # A Secret mounted from a file written with `echo` ends with a newline that
                # is not part of the secret.
                secret = secret_file.read_bytes().rstrip(b"\r\n")
                if not secret:
                    raise ValueError("the file is empty")
                return cls(secret=secret)
            if public_key_file is not None:
                return cls(public_key=load_pem_public_key(public_key_file.read_bytes()))
            if jwks_file is not None:
                return cls(jwks=jwt.PyJWKSet.from_json(jwks_file.read_text()))
        except (OSError, ValueError, TypeError, jwt.PyJWTError) as error:
            flag = (
                "--jwt-secret-file"
                if secret_file is not None
                else "--jwt-public-key"
                if public_key_file is not None
                else "--jwt-jwks-file"
            )
            raise AuthenticatorError(f"{flag}: cannot use it: {error}") from None
        raise AuthenticatorError(
            "--authenticator jwt needs one of --jwt-secret-file, --jwt-public-key, --jwt-jwks-file"
        )

    def key_for(self, token: str) -> tuple[Any, list[str]]:
        """The key and the algorithms allowed to verify `token`."""
        if self.secret is not None:
            return self.secret, ["HS256"]
        if self.public_key is not None:
            if isinstance(self.public_key, rsa.RSAPublicKey):
                return self.public_key, ["RS256"]
            if isinstance(self.public_key, ec.EllipticCurvePublicKey):
                return self.public_key, ["ES256"]
            raise AuthenticationFailed("bad_key", "the gate's public key is neither RSA nor EC")
        assert self.jwks is not None
        kid = jwt.get_unverified_header(token).get("kid")
        if kid is None:
            # Only a set of one key verifies a token without kid: with several, a token must
            # say which (never matched to a key lacking a kid too).
            if len(self.jwks.keys) != 1:
                raise AuthenticationFailed(
                    "unknown_key",
                    "the token has no key id ('kid') and the gate's JWKS has several keys",
                )
            return self._jwk(self.jwks.keys[0])
        for key in self.jwks.keys:
            if key.key_id is not None and key.key_id == kid:
                return self._jwk(key)
        raise AuthenticationFailed(
            "unknown_key", f"the token's key id {str(kid)[:64]!r} is not in the gate's JWKS"
        )

    @staticmethod
    def _jwk(key: jwt.PyJWK) -> tuple[Any, list[str]]:
        algorithm = key.algorithm_name
        return key.key, [algorithm] if algorithm in ("RS256", "ES256", "HS256") else []


# Why a token was refused, by PyJWT's exception (subclasses first).
_FAILURES: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "expired", "the token has expired"),
    (jwt.InvalidAudienceError, "wrong_audience", "the token is not for this audience"),
    (jwt.InvalidIssuerError, "wrong_issuer", "the token is not from the expected issuer"),
    (jwt.InvalidSignatureError, "bad_signature", "the token's signature does not verify"),
    (jwt.MissingRequiredClaimError, "missing_claim", "the token lacks a required claim"),
    (jwt.ImmatureSignatureError, "not_yet_valid", "the token is not valid yet"),
    (jwt.InvalidAlgorithmError, "bad_algorithm", "the token's algorithm is not accepted"),
    (jwt.DecodeError, "malformed", "the token is not a well-formed JWT"),
    (jwt.PyJWTError, "invalid", "the token is invalid"),
)


class JwtAuthenticator:
    """Verifies the client's JWT with PyJWT: signature with `keys`, ``exp`` (required),
    ``nbf`` and ``iat`` with :data:`DEFAULT_LEEWAY_S` of skew, ``aud`` against `audience`
    and ``iss`` against `issuer` when they are set; ``sub`` is required and becomes the
    principal's subject, with the claims named in `claims`."""

    def __init__(
        self,
        keys: JwtKeys,
        *,
        audience: str | None = None,
        issuer: str | None = None,
        claims: Sequence[str] = (),
        leeway_s: float = DEFAULT_LEEWAY_S,
    ) -> None:
        self._keys = keys
        self._audience = audience
        self._issuer = issuer
        self._claims = tuple(claims)
        self._leeway = leeway_s

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        return self.verify(credentials.token)

    async def authenticate_session(self, credentials: Credentials) -> Admission:
        return self.verify_session(credentials.token)

    def verify(self, token: str | None) -> Principal:
        """The principal of `token`; raises :class:`AuthenticationFailed` saying why not."""
        principal = self.verify_session(token).principal
        assert principal is not None
        return principal

    def verify_session(self, token: str | None) -> Admission:
        """The principal of `token` and when the gate stops accepting it (``exp`` plus the
        tolerated skew); raises :class:`AuthenticationFailed` saying why not."""
        if not token:
            raise AuthenticationFailed(
                "missing_token",
                f"this gate requires a token: send '{wire.AUTHORIZATION_KEY}: Bearer <token>' "
                "metadata with the registration",
            )
        if not token.isascii():  # a JWT is base64url and dots; PyJWT would fail to encode it
            raise AuthenticationFailed("malformed", "the token is not a well-formed JWT")
        try:
            key, algorithms = self._keys.key_for(token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as error:
            for kind, reason, message in _FAILURES:
                if isinstance(error, kind):
                    raise AuthenticationFailed(reason, message) from None
            raise  # unreachable: PyJWTError is the last entry
        principal = Principal(str(claims["sub"]), self._selected(claims))
        if not all(map(wire.is_text, (principal.subject, *principal.claims.values()))):
            # JSON may escape a lone surrogate ("\ud800"); protobuf strings refuse it.
            raise AuthenticationFailed("malformed", "the token's claims are not valid text")
        # exp is required and PyJWT checked it is a number.
        return Admission(principal, float(claims["exp"]) + self._leeway)

    def _selected(self, claims: Mapping[str, Any]) -> dict[str, str]:
        selected: dict[str, str] = {}
        for name in self._claims:
            if name in claims:
                value = claims[name]
                selected[name] = value if isinstance(value, str) else json.dumps(value)
        return selected


async def authenticate_once(
    authenticator: Authenticator,
    credentials: Credentials,
    on_refused: Callable[[str], None],
) -> Admission:
    """The :class:`Admission` `authenticator` gives `credentials` (a registration's, gRPC or
    HTTP, or a one-shot HTTP call's): from ``authenticate_session`` when it has one, else the
    principal of ``authenticate`` with no expiry. A refusal is logged once at INFO, never
    with the token, counted by `on_refused(reason)` and raised as :class:`Unauthenticated`;
    an authenticator that broke is logged with its traceback and raised as
    :class:`Unavailable` (the client may try again)."""
    try:
        if isinstance(authenticator, SessionAuthenticator):
            return await authenticator.authenticate_session(credentials)
        return Admission(await authenticator.authenticate(credentials))
    except Unauthenticated as refused:
        reason = refused.reason if isinstance(refused, AuthenticationFailed) else "refused"
        log.info("client authentication failed", reason=reason, peer=credentials.peer)
        on_refused(reason)
        raise
    except Exception:  # a user's authenticator that broke; CancelledError passes
        log.exception("authenticator failed", peer=credentials.peer)
        raise Unavailable("the gate could not authenticate the client") from None


async def admit(
    peers: PeerLimits,
    authenticator: Authenticator,
    credentials: Credentials,
    peer: str,
    on_refused: Callable[[str], None],
) -> Admission:
    """Admits a registration (a gRPC Register or Session stream, an HTTP event stream): one
    token of `peer`'s registration rate, then :func:`authenticate_once`. Raises
    :class:`ResourceExhausted` when the peer registers too fast (counted as
    ``registration_rate``), or what :func:`authenticate_once` raises."""
    try:
        peers.take(peer)
    except ResourceExhausted:
        on_refused("registration_rate")
        raise
    return await authenticate_once(authenticator, credentials, on_refused)


@contextlib.contextmanager
def session_expiry(proxy: ClientProxy, expires_at: float | None) -> Iterator[None]:
    """Ends `proxy`'s session (:meth:`ClientProxy.expire`) when its credential expires, at
    `expires_at` (:attr:`Admission.expires_at`; None: never), while the block runs: one loop
    timer per session, cancelled when the block exits; calls are not checked one by one."""
    if expires_at is None:
        yield
        return
    timer = asyncio.get_running_loop().call_later(
        max(0.0, expires_at - time.time()), _expire, proxy
    )
    try:
        yield
    finally:
        timer.cancel()


def _expire(proxy: ClientProxy) -> None:
    if proxy.expire():
        log.info("client session ended: its token expired", client_id=proxy.client_id)


def principal_message(principal: Principal | None) -> node_pb2.Principal | None:
    """The wire form of `principal`, as the gate stamps it on a client's calls."""
    if principal is None:
        return None
    return node_pb2.Principal(subject=principal.subject, claims=dict(principal.claims))


def caller_fields(caller: node_pb2.Caller) -> dict[str, str]:
    """The log fields of a client's caller: its client id and, when authenticated, its
    principal's subject (never its claims: they may be personal data)."""
    fields = {"client_id": caller.client_id}
    if caller.HasField("principal"):
        fields["principal"] = caller.principal.subject[:256]
    return fields


def mark_principal(caller: node_pb2.Caller) -> None:
    """Records the principal's subject on the current span (``enduser.id``)."""
    if caller.HasField("principal"):
        trace.get_current_span().set_attribute(ENDUSER_ID, caller.principal.subject)


def build_authenticator(
    name: str,
    *,
    secret_file: Path | None = None,
    public_key_file: Path | None = None,
    jwks_file: Path | None = None,
    audience: str | None = None,
    issuer: str | None = None,
    claims: Sequence[str] = (),
) -> Authenticator:
    """The authenticator ``--authenticator`` names (see the module docstring); raises
    :class:`AuthenticatorError` when it cannot be set up."""
    if name == "none":
        return NoAuthenticator()
    if name == "jwt":
        keys = JwtKeys.from_files(secret_file, public_key_file, jwks_file)
        return JwtAuthenticator(keys, audience=audience, issuer=issuer, claims=claims)
    return load_authenticator(name)


def load_authenticator(spec: str) -> Authenticator:
    """The user's authenticator named ``module:attr`` (an instance, or a class built with no
    arguments); raises :class:`AuthenticatorError` when it cannot be loaded."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AuthenticatorError(
            f"--authenticator {spec!r}: expected none, jwt or module:attribute"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise AuthenticatorError(
            f"--authenticator: cannot import {module_name!r}: {type(error).__name__}: {error}"
        ) from error
    found = getattr(module, attr, None)
    if isinstance(found, type):
        try:
            found = found()
        except Exception as error:
            raise AuthenticatorError(
                f"--authenticator: {spec} could not be built: {type(error).__name__}: {error}"
            ) from error
    if not isinstance(found, Authenticator):
        raise AuthenticatorError(
            f"--authenticator: {spec} is not an authenticator (an object with "
            "'async def authenticate(self, credentials)')"
        )
    return found


__all__ = [
    "Admission",
    "AuthenticationFailed",
    "Authenticator",
    "AuthenticatorError",
    "Credentials",
    "JwtAuthenticator",
    "JwtKeys",
    "NoAuthenticator",
    "SessionAuthenticator",
    "admit",
    "authenticate_once",
    "bearer_token",
    "build_authenticator",
    "caller_fields",
    "credentials_of",
    "load_authenticator",
    "mark_principal",
    "principal_message",
    "session_expiry",
]
