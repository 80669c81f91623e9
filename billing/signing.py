"""The platform's Ed25519 key: it signs export-bundle manifests.

Production reads the private key from NICHE_SIGNING_KEY (base64 of the 32 raw bytes) so
every machine signs with the same key. The embedded default and the tests generate one
once into var/ and reuse it. Anyone verifies a bundle with the public key served at
`/.well-known/niche-signing-key`; the key id (a SHA-256 prefix of the public key) in
each manifest says which key signed it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

ALGORITHM = "Ed25519"


@dataclass(frozen=True)
class PlatformSigningKey:
    private_key: Ed25519PrivateKey
    public_raw: bytes

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_raw)

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `data`."""
        return self.private_key.sign(data)

    def public_document(self) -> dict:
        """What the well-known URL serves: enough to verify with any Ed25519 library."""
        public_key = self.private_key.public_key()
        pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {
            "algorithm": ALGORITHM,
            "key_id": self.key_id,
            "public_key": base64.b64encode(self.public_raw).decode(),
            "public_key_pem": pem.decode(),
        }


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _private_from_base64(encoded: str, *, source: str) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ImproperlyConfigured(
            f"{source} must be the base64 of a 32-byte Ed25519 private key."
        ) from exc


def _read_or_create_key_file(path: Path) -> str:
    """The key in `path`, written once with mode 0600 if absent.

    Two processes starting together both try: the file is linked into place atomically,
    so one wins and both read the same key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(base64.b64encode(raw).decode() + "\n")
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process won: use its key
        finally:
            temporary.unlink()
    return path.read_text()


@lru_cache(maxsize=1)
def platform_signing_key() -> PlatformSigningKey:
    """The key from NICHE_SIGNING_KEY, or from var/ (created on first use) when unset."""
    if settings.NICHE_SIGNING_KEY:
        private_key = _private_from_base64(settings.NICHE_SIGNING_KEY, source="NICHE_SIGNING_KEY")
    else:
        path = Path(settings.NICHE_SIGNING_KEY_FILE)
        private_key = _private_from_base64(_read_or_create_key_file(path), source=str(path))
    public_raw = private_key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return PlatformSigningKey(private_key=private_key, public_raw=public_raw)


def signature_is_valid(*, public_key: str, data: bytes, signature: bytes) -> bool:
    """Whether `signature` is the Ed25519 signature of `data` under the base64 public key."""
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key, validate=True))
        key.verify(signature, data)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
