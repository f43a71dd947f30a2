"""A token that verified is remembered for a short while, never past its expiry, and a
token that failed is checked again every time."""

from __future__ import annotations

import time
from typing import Any

import pytest

from app.auth.keys import StaticKey
from app.auth.tokens import VERIFIED_TOKEN_TTL_SECONDS, TokenVerifier
from app.dev.keys import DEV_AUDIENCE, DEV_ISSUER, KeyPair
from app.errors import InvalidToken


class CountingKeys:
    """The real PEM key source, counting how often a token is verified in full."""

    def __init__(self, keypair: KeyPair) -> None:
        self._keys = StaticKey(keypair.public_pem)
        self.lookups = 0

    async def key_for(self, token: str) -> Any:
        self.lookups += 1
        return await self._keys.key_for(token)

    async def close(self) -> None:
        await self._keys.close()


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _verifier(keys: CountingKeys, clock: Clock) -> TokenVerifier:
    return TokenVerifier(
        keys,
        algorithm="RS256",
        issuer=DEV_ISSUER,
        audience=DEV_AUDIENCE,
        leeway_seconds=0,
        require_file_id=False,
        clock=clock,
    )


@pytest.fixture
def keypair() -> KeyPair:
    return KeyPair.generate()


async def test_a_verified_token_is_remembered_until_the_cap(keypair: KeyPair) -> None:
    keys, clock = CountingKeys(keypair), Clock()
    verifier = _verifier(keys, clock)
    token = keypair.token("user-1", file_id=7)

    first = await verifier.verify(token)
    again = await verifier.verify(token)
    assert first == again
    assert (first.sub, first.file_id) == ("user-1", 7)
    assert keys.lookups == 1

    clock.now += VERIFIED_TOKEN_TTL_SECONDS + 1
    await verifier.verify(token)
    assert keys.lookups == 2


async def test_a_remembered_token_lapses_at_its_expiry(keypair: KeyPair) -> None:
    keys, clock = CountingKeys(keypair), Clock()
    verifier = _verifier(keys, clock)
    token = keypair.token("user-1", ttl_seconds=5)

    await verifier.verify(token)
    clock.now += 6  # past `exp`, well within the cap
    await verifier.verify(token)  # verified in full again (the real clock is not there yet)
    assert keys.lookups == 2


async def test_a_refused_token_is_never_remembered(keypair: KeyPair) -> None:
    keys, clock = CountingKeys(keypair), Clock()
    verifier = _verifier(keys, clock)
    forged = KeyPair.generate().token("user-1")

    for _ in range(2):
        with pytest.raises(InvalidToken):
            await verifier.verify(forged)
    assert keys.lookups == 2


async def test_tokens_are_remembered_per_token(keypair: KeyPair) -> None:
    keys, clock = CountingKeys(keypair), Clock()
    verifier = _verifier(keys, clock)
    alice, bob = keypair.token("alice"), keypair.token("bob")

    assert (await verifier.verify(alice)).sub == "alice"
    assert (await verifier.verify(bob)).sub == "bob"
    assert (await verifier.verify(alice)).sub == "alice"
    assert keys.lookups == 2
