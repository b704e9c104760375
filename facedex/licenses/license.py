"""Signed licenses: a JSON body, an Ed25519 signature over its canonical bytes, and a check.

A license file is ``{"license": {...}, "signature": "<base64>"}``. The body is
signed as canonical JSON (sorted keys, no spaces), so any edit to it (a
feature added, an expiry moved) breaks the signature. The vendor keeps the
private key; deployments get the public key only.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class LicenseError(Exception):
    """The license is missing, malformed, tampered with, signed by another key, or expired."""


@dataclass
class License:
    licensee: str
    features: list[str]
    expires: str  # ISO 8601, UTC
    issued: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    license_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def canonical(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_SORT_KEYS)

    @property
    def expires_at(self) -> datetime:
        return datetime.fromisoformat(self.expires)

    def expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires_at


def generate_keys() -> tuple[str, str]:
    """(private key PEM, public key as base64 raw bytes)."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pem.decode(), base64.b64encode(public).decode()


def issue(private_pem: str, licensee: str, features: list[str], days: int, expires: datetime | None = None) -> bytes:
    """A signed license file's bytes, valid for ``days`` (or until ``expires``)."""
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise LicenseError("the signing key is not an Ed25519 private key")
    until = expires or datetime.now(UTC) + timedelta(days=days)
    lic = License(licensee, sorted(set(features)), until.isoformat(timespec="seconds"))
    signature = base64.b64encode(key.sign(lic.canonical())).decode()
    return orjson.dumps({"license": asdict(lic), "signature": signature}, option=orjson.OPT_INDENT_2)


def verify(data: bytes, public_key_b64: str, now: datetime | None = None) -> License:
    """The license, if its signature holds under ``public_key_b64`` and it has not expired."""
    try:
        doc = orjson.loads(data)
        lic = License(**doc["license"])
        signature = base64.b64decode(doc["signature"], validate=True)
        public = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64, validate=True))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LicenseError(f"malformed license: {type(exc).__name__}: {exc}") from None
    try:
        public.verify(signature, lic.canonical())
    except InvalidSignature:
        raise LicenseError("signature does not match: the license was altered or signed by another key") from None
    if lic.expired(now):
        raise LicenseError(f"license expired on {lic.expires}")
    return lic
