"""The gate's authenticators: bearer tokens, JWT verification with each key kind, user ones."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from goverse import wire
from goverse.errors import Unauthenticated
from goverse.gate._auth import (
    DEFAULT_LEEWAY_S,
    Admission,
    AuthenticationFailed,
    AuthenticatorError,
    Credentials,
    JwtAuthenticator,
    JwtKeys,
    NoAuthenticator,
    authenticate_once,
    bearer_token,
    build_authenticator,
    load_authenticator,
    session_expiry,
)
from goverse.gate._client_proxy import ClientProxy, StreamEnd
from goverse.objects import Principal

SECRET = "unit-test-secret-of-at-least-32-bytes"


def claims(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"sub": "carol", "exp": int(time.time()) + 60}
    values.update(overrides)
    return {key: value for key, value in values.items() if value is not None}


def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    return path


def reason(authenticator: JwtAuthenticator, token: str | None) -> str:
    with pytest.raises(AuthenticationFailed) as raised:
        authenticator.verify(token)
    assert token is None or token not in raised.value.message
    return raised.value.reason


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ([("authorization", "Bearer abc")], "abc"),
        ([("authorization", "bearer  abc ")], "abc"),
        ([("authorization", "Basic abc")], None),
        ([("authorization", "Bearer")], None),
        ([("other", "Bearer abc")], None),
        (None, None),
    ],
)
def test_the_bearer_token_is_read_from_the_authorization_metadata(
    metadata: list[tuple[str, str]] | None, expected: str | None
) -> None:
    assert bearer_token(metadata) == expected


async def test_none_makes_every_client_anonymous() -> None:
    assert await NoAuthenticator().authenticate(Credentials("anything")) is None


async def test_an_hs256_token_gives_its_subject_and_the_selected_claims(tmp_path: Path) -> None:
    """Only the claims named are forwarded; a claim that is not a string is its JSON."""
    keys = JwtKeys.from_files(secret_file(tmp_path), None, None)
    authenticator = JwtAuthenticator(keys, claims=("scope", "roles", "absent"))
    token = jwt.encode(claims(scope="a b", roles=["x"], email="c@example"), SECRET, "HS256")
    principal = await authenticator.authenticate(Credentials(token))
    assert principal == Principal("carol", {"scope": "a b", "roles": json.dumps(["x"])})


def test_each_refusal_has_its_reason(tmp_path: Path) -> None:
    keys = JwtKeys.from_files(secret_file(tmp_path), None, None)
    authenticator = JwtAuthenticator(keys, audience="aud", issuer="iss")
    good = {"aud": "aud", "iss": "iss"}
    assert authenticator.verify(jwt.encode(claims(**good), SECRET, "HS256")).subject == "carol"
    cases = {
        "missing_token": None,
        "expired": jwt.encode(claims(exp=int(time.time()) - 120, **good), SECRET, "HS256"),
        "wrong_audience": jwt.encode(claims(aud="other", iss="iss"), SECRET, "HS256"),
        "wrong_issuer": jwt.encode(claims(aud="aud", iss="other"), SECRET, "HS256"),
        "bad_signature": jwt.encode(claims(**good), SECRET + "x", "HS256"),
        "missing_claim": jwt.encode(claims(exp=None, **good), SECRET, "HS256"),
        "malformed": "a.b",
    }
    for expected, token in cases.items():
        assert reason(authenticator, token) == expected, expected


@pytest.mark.parametrize(
    "token",
    [
        "\udcff",  # an HTTP header's undecodable byte
        jwt.encode(claims(sub="\ud800"), SECRET, "HS256"),  # signed, but no text
        jwt.encode(claims(scope="\ud800"), SECRET, "HS256"),
    ],
)
def test_a_token_or_claims_that_are_not_text_are_malformed(tmp_path: Path, token: str) -> None:
    """PyJWT cannot encode the first; the others verify, but a protobuf string cannot hold
    their subject or selected claim: each is refused as malformed, not failed on."""
    keys = JwtKeys.from_files(secret_file(tmp_path), None, None)
    assert reason(JwtAuthenticator(keys, claims=("scope",)), token) == "malformed"


def test_a_token_signed_with_another_algorithm_is_refused(tmp_path: Path) -> None:
    """An HS256 gate refuses an unsigned (alg none) token and an HS512 one."""
    authenticator = JwtAuthenticator(JwtKeys.from_files(secret_file(tmp_path), None, None))
    unsigned = jwt.encode(claims(), "", "none")
    assert reason(authenticator, unsigned) == "bad_algorithm"
    long_secret = SECRET * 2  # HS512 wants 64 bytes
    assert reason(authenticator, jwt.encode(claims(), long_secret, "HS512")) == "bad_algorithm"


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_a_public_key_verifies_rs256_or_es256_by_its_type(tmp_path: Path, kind: str) -> None:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = tmp_path / "key.pem"
    pem.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    authenticator = JwtAuthenticator(JwtKeys.from_files(None, pem, None))
    algorithm = "RS256" if kind == "rsa" else "ES256"
    assert authenticator.verify(jwt.encode(claims(), private, algorithm)).subject == "carol"
    other: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    assert reason(authenticator, jwt.encode(claims(), other, algorithm)) == "bad_signature"
    # The classic confusion: the public key used as an HMAC secret.
    assert reason(authenticator, jwt.encode(claims(), SECRET, "HS256")) == "bad_algorithm"


def test_a_jwks_picks_the_key_by_kid_and_refuses_an_unknown_kid(tmp_path: Path) -> None:
    one = ec.generate_private_key(ec.SECP256R1())
    two = ec.generate_private_key(ec.SECP256R1())
    jwks = {
        "keys": [
            {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "kid": kid}
            for key, kid in ((one, "k1"), (two, "k2"))
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    authenticator = JwtAuthenticator(JwtKeys.from_files(None, None, path))
    for key, kid in ((one, "k1"), (two, "k2")):
        token = jwt.encode(claims(), key, "ES256", headers={"kid": kid})
        assert authenticator.verify(token).subject == "carol"
    swapped = jwt.encode(claims(), one, "ES256", headers={"kid": "k2"})
    assert reason(authenticator, swapped) == "bad_signature"
    unknown = jwt.encode(claims(), one, "ES256", headers={"kid": "k9"})
    assert reason(authenticator, unknown) == "unknown_key"


def test_a_token_without_kid_is_refused_by_a_jwks_of_several_keys(tmp_path: Path) -> None:
    """Only a JWKS of a single key verifies tokens without ``kid``: with several, a token
    without one is refused, even when a key of the set has no ``kid`` either (the key is
    never picked by both lacking one)."""
    one = ec.generate_private_key(ec.SECP256R1())
    two = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "jwks.json"
    path.write_text(
        json.dumps(
            {
                "keys": [
                    json.loads(jwt.algorithms.ECAlgorithm.to_jwk(one.public_key())),
                    {
                        **json.loads(jwt.algorithms.ECAlgorithm.to_jwk(two.public_key())),
                        "kid": "k2",
                    },
                ]
            }
        )
    )
    authenticator = JwtAuthenticator(JwtKeys.from_files(None, None, path))
    with pytest.raises(AuthenticationFailed) as raised:
        authenticator.verify(jwt.encode(claims(), one, "ES256"))
    assert raised.value.reason == "unknown_key"
    assert "no key id" in raised.value.message
    assert authenticator.verify(jwt.encode(claims(), two, "ES256", headers={"kid": "k2"}))


def test_a_token_without_kid_is_verified_by_a_jwks_of_one_key(tmp_path: Path) -> None:
    """A JWKS of a single key verifies a token without ``kid`` with that key."""
    one = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "jwks.json"
    path.write_text(
        json.dumps(
            {
                "keys": [
                    {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(one.public_key())), "kid": "k1"}
                ]
            }
        )
    )
    authenticator = JwtAuthenticator(JwtKeys.from_files(None, None, path))
    assert authenticator.verify(jwt.encode(claims(), one, "ES256")).subject == "carol"


def test_unusable_key_files_stop_the_gate_naming_the_flag(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.write_text("not a key")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for files, flag in (
        ((empty, None, None), "--jwt-secret-file"),
        ((None, garbage, None), "--jwt-public-key"),
        ((None, None, garbage), "--jwt-jwks-file"),
        ((tmp_path / "missing", None, None), "--jwt-secret-file"),
    ):
        with pytest.raises(AuthenticatorError, match=flag):
            JwtKeys.from_files(*files)


class Fixed:
    """A user's authenticator: accepts the token "open-sesame"."""

    async def authenticate(self, credentials: Credentials) -> Principal | None:
        if credentials.token != "open-sesame":
            raise Unauthenticated("wrong word")
        return Principal("ali", {"peer": credentials.peer})


fixed = Fixed()


async def test_a_users_authenticator_is_loaded_by_module_and_attribute() -> None:
    """`module:attr` names an instance, or a class built with no arguments."""
    for spec in (f"{__name__}:fixed", f"{__name__}:Fixed"):
        authenticator = build_authenticator(spec)
        principal = await authenticator.authenticate(Credentials("open-sesame", peer="p"))
        assert principal == Principal("ali", {"peer": "p"})
        with pytest.raises(Unauthenticated):
            await authenticator.authenticate(Credentials("other"))


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("no.such.module:x", "cannot import"),
        (f"{__name__}:SECRET", "is not an authenticator"),
        (f"{__name__}:missing", "is not an authenticator"),
        ("nocolon", "expected none, jwt or module:attribute"),
    ],
)
def test_an_unusable_users_authenticator_stops_the_gate(spec: str, says: str) -> None:
    with pytest.raises(AuthenticatorError, match=says):
        load_authenticator(spec)


def test_a_jwt_session_lasts_until_the_gate_would_refuse_its_token(tmp_path: Path) -> None:
    """A JWT's admission expires at its ``exp`` plus the tolerated clock skew: the moment the
    gate stops accepting the token at registration."""
    authenticator = JwtAuthenticator(JwtKeys.from_files(secret_file(tmp_path), None, None))
    exp = int(time.time()) + 60
    admission = authenticator.verify_session(jwt.encode(claims(exp=exp), SECRET, "HS256"))
    assert admission == Admission(Principal("carol"), exp + DEFAULT_LEEWAY_S)


async def test_an_authenticator_without_sessions_admits_without_expiry() -> None:
    """An authenticator with only ``authenticate`` (``none``, a user's) gives sessions no
    expiry: they last until they end otherwise."""
    admission = await authenticate_once(NoAuthenticator(), Credentials(None), lambda _: None)
    assert admission == Admission(None, None)


async def test_a_session_is_expired_when_its_credential_expires() -> None:
    """session_expiry closes the proxy as token_expired once its time has come; its stream
    then ends with UNAUTHENTICATED and close reason token_expired."""
    proxy = ClientProxy("g/1", "secret", max_messages=4, max_bytes=1024, max_batch_bytes=1024)
    with session_expiry(proxy, time.time()):
        async with asyncio.timeout(10):
            await proxy.wait_closed()
    assert proxy.token_expired
    with pytest.raises(StreamEnd) as ended:
        proxy.last_event()
    assert ended.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert ended.value.reason is wire.CloseReason.TOKEN_EXPIRED
    assert "the token has expired" in ended.value.details


async def test_a_session_left_before_its_expiry_is_not_expired() -> None:
    """Leaving session_expiry's block cancels its timer: a session that ended before its
    credential expired is never expired afterwards."""
    proxy = ClientProxy("g/2", "secret", max_messages=4, max_bytes=1024, max_batch_bytes=1024)
    with session_expiry(proxy, time.time()):
        pass  # left before the loop ran the timer due now
    for _ in range(3):  # loop iterations in which a timer due now would have run
        await asyncio.sleep(0)
    assert not proxy.closed
