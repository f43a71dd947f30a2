"""A development RSA key pair and tokens signed with it, as the main service would."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

DEV_ISSUER = "dev-main-service"
DEV_AUDIENCE = "upload-service"


def write_private_file(path: Path, text: str) -> None:
    """Write a secret (private key, token) readable by its owner only from the first byte:
    created 0600, never written and then chmod-ed (which leaves it world-readable, under
    the usual umask, for an instant). A symlink at `path` is not followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(fd, 0o600)  # a file that already existed keeps its mode otherwise
        out.write(text)


@dataclass(frozen=True)
class KeyPair:
    private_pem: str
    public_pem: str

    @classmethod
    def generate(cls) -> KeyPair:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        private_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        return cls(private_pem=private_pem, public_pem=public_pem)

    @classmethod
    def load_or_create(cls, directory: Path) -> KeyPair:
        private_path, public_path = directory / "jwt-private.pem", directory / "jwt-public.pem"
        if private_path.exists() and public_path.exists():
            return cls(private_pem=private_path.read_text(), public_pem=public_path.read_text())
        pair = cls.generate()
        directory.mkdir(parents=True, exist_ok=True)
        write_private_file(private_path, pair.private_pem)
        public_path.write_text(pair.public_pem)
        return pair

    def token(
        self,
        sub: str = "dev-user",
        *,
        issuer: str = DEV_ISSUER,
        audience: str = DEV_AUDIENCE,
        ttl_seconds: int = 12 * 3600,
        algorithm: str = "RS256",
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "sub": sub,
            "iss": issuer,
            "aud": audience,
            "iat": now,
            "exp": now + ttl_seconds,
            "jti": uuid.uuid4().hex,
        }
        payload.update(claims)
        return jwt.encode(
            {k: v for k, v in payload.items() if v is not None},
            self.private_pem,
            algorithm=algorithm,
        )
