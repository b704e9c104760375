"""Service-to-service trust: the shared internal token, and match requests signed by the API.

Every internal route (``facedex.http.create_app(..., internal=True)``) requires
``Authorization: Bearer <internal_token>``. That alone would let any holder of a
connection to Redis (or a confused service) send a ``MatchRequest`` naming any
account, so the API also signs the request it built for the account it
authenticated: an HMAC, with a key derived from the internal token, over the
msgpack encoding of the whole request (its ``auth`` left empty), expiry
included. Signing only the identity would let anyone who reads a stream entry
replay it within its expiry with other references, limit, threshold or
filters. The proxy, the brute-force Matcher and the Indexed Matcher (which
reads requests from a Redis stream anyone with Redis access can write) verify
it before they touch a list.
"""

from __future__ import annotations

import hashlib
import hmac
import time

import msgspec

from facedex import wire
from facedex.errors import Errors, FacedexError

_KEY_LABEL = b"facedex match-request v2"  # v2: the MAC covers the whole request


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


def _mac(internal_token: str, req: wire.MatchRequest) -> bytes:
    # the whole message but its signature, as msgpack: msgspec writes a struct's fields in declaration order, so the
    # signer and every verifier that decoded the same message produce the same bytes (a field added to MatchRequest
    # later is covered without a change here)
    unsigned = wire.encode(msgspec.structs.replace(req, auth=b""))
    return hmac.new(_key(internal_token), unsigned, hashlib.sha256).digest()


def sign_request(internal_token: str | None, req: wire.MatchRequest, ttl_s: float) -> wire.MatchRequest:
    """``req`` with an expiry ``ttl_s`` from now and the API's signature over every other field of it."""
    req = msgspec.structs.replace(req, auth=b"", auth_expires_ms=int((time.time() + ttl_s) * 1000))
    if not internal_token:
        return req  # unsigned: every verifier refuses it (10011), as it refuses everything without a token
    return msgspec.structs.replace(req, auth=_mac(internal_token, req))


def verify_request(internal_token: str | None, req: wire.MatchRequest) -> None:
    """Raise 10011 unless ``req`` is exactly what the API signed (account, list, references, limit, filters, ...)
    and the signature has not expired."""
    if not internal_token:
        raise FacedexError(Errors.IDENTITY_UNVERIFIED, "internal_token is not set: no match request can be authenticated")
    if len(req.account_id) != 16 or len(req.list_id) != 16 or not 0 <= req.auth_expires_ms < 1 << 63:
        raise FacedexError(Errors.IDENTITY_UNVERIFIED, "malformed identity")
    if not hmac.compare_digest(_mac(internal_token, req), req.auth):
        raise FacedexError(Errors.IDENTITY_UNVERIFIED, "the request is not signed by the API as it stands")
    if req.auth_expires_ms < time.time() * 1000:
        raise FacedexError(Errors.IDENTITY_UNVERIFIED, "the request's signature has expired")
