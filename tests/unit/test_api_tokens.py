"""Pieces of token checking that need no server: the JWKS parser and the verified-token memory."""

from __future__ import annotations

import json
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from npcforge.api.auth import Principal, unauthorized
from npcforge.api.jwt_auth import VerifiedTokens, parse_jwks


def test_jwks_parsing_keeps_only_asymmetric_signature_keys():
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    good = json.loads(jwt.get_algorithm_by_name("ES256").to_jwk(public))
    document = {
        "keys": [
            {**good, "kid": "ok"},
            {**good, "kid": "enc", "use": "enc"},
            {**good},  # no kid
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "kid": "broken", "n": "x"},
            "not a key",
        ]
    }
    assert set(parse_jwks(document)) == {"ok"}
    with pytest.raises(ValueError):
        parse_jwks({"nokeys": []})


class WallClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_verified_tokens_are_forgotten_at_expiry_and_on_key_changes():
    clock = WallClock()
    memory = VerifiedTokens(wall_clock=clock)
    alice = Principal(user_id=uuid.uuid4())
    memory.put("token-a", alice, expires_at=clock.now + 60, generation=1)
    assert memory.get("token-a", 1) == alice
    assert memory.get("token-b", 1) is None
    assert memory.get("token-a", 2) is None  # the JWKS changed since
    clock.now += 60
    assert memory.get("token-a", 1) is None  # expired


def test_verified_tokens_are_bounded():
    memory = VerifiedTokens(size=3, wall_clock=WallClock())
    for index in range(5):
        memory.put(f"t{index}", Principal(user_id=uuid.uuid4()), expires_at=2e6, generation=0)
    assert [memory.get(f"t{index}", 0) is not None for index in range(5)] == [
        False, False, True, True, True,
    ]  # fmt: skip
    assert all(len(key) == 32 for key in memory._entries)  # digests, not the tokens


def test_challenges():
    missing = unauthorized()
    assert missing.headers == {"WWW-Authenticate": "Bearer"} and missing.details is None
    bad = unauthorized("expired")
    assert bad.headers["WWW-Authenticate"] == (
        'Bearer error="invalid_token", error_description="expired"'
    )
    assert bad.details == {"reason": "expired"}
