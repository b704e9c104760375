"""Service-to-service trust: the shared internal token, and signed caller identities in match requests.

Every internal route (``facedex.http.create_app(..., internal=True)``) requires
``Authorization: Bearer <internal_token>``. That alone would let any holder of a
connection to Redis (or a confused service) send a ``MatchRequest`` naming any
account, so the API also signs the account id it authenticated: an HMAC over
(account id, list id, expiry) with a key derived from the internal token. The
proxy, the brute-force Matcher and the Indexed Matcher (which reads requests
from a Redis stream anyone with Redis access can write) verify it before they
touch a list.
"""

from __future__ import annotations

import hashlib
import hmac
import time

from facedex import wire
from facedex.errors import Errors, FacedexError

_KEY_LABEL = b"facedex match-request identity v1"


def bearer(token: str | None) -> dict[str, str]:
    """Headers carrying the internal token (none when it is unset: the receiver refuses with 10010)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_matches(presented: str | None, expected: str | None) -> bool:
    """Constant-time comparison; an unset expected token matches nothing."""
    if not expected or presented is None:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def _key(internal_token: str) -> bytes:
    # A derived key, so a signature never exposes (or is usable as) the bearer token itself.
    return hmac.new(internal_token.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _mac(internal_token: str, account_id: bytes, list_id: bytes, expires_ms: int) -> bytes:
    msg = account_id + list_id + expires_ms.to_bytes(8, "big", signed=False)
    return hmac.new(_key(internal_token), msg, hashlib.sha256).digest()


def sign(internal_token: str | None, account_id: bytes, list_id: bytes, ttl_s: float) -> tuple[bytes, int]:
    """(signature, expiry in unix ms) vouching that ``account_id`` may match against ``list_id`` until then."""
    expires_ms = int((time.time() + ttl_s) * 1000)
    if not internal_token:
        return b"", expires_ms
    return _mac(internal_token, account_id, list_id, expires_ms), expires_ms


def verify(internal_token: str | None, req: wire.MatchRequest) -> None:
    """Raise 10011 unless ``req`` carries a valid, unexpired signature of its account and list ids."""
    if not internal_token:
        raise FacedexError(Errors.IDENTITY_UNVERIFIED, "internal_token is not set: no match request can be authenticated")
    if len(req.account_id) != 16 or len(req.list_id) != 16 or not 0 <= req.auth_expires_ms < 1 << 63:
        raise FacedexError(Errors.IDENTITY_UNVERIFIED, "malformed identity")
    expected = _mac(internal_token, req.account_id, req.list_id, req.auth_expires_ms)
    if not hmac.compare_digest(expected, req.auth):
        raise FacedexError(Errors.IDENTITY_UNVERIFIED, "the account id is not signed by the API")
    if req.auth_expires_ms < time.time() * 1000:
        raise FacedexError(Errors.IDENTITY_UNVERIFIED, "the request's identity signature has expired")
