"""Dashboard sessions: a signed, expiring cookie instead of the admin token itself.

The cookie holds ``<expiry>.<nonce>.<hmac>``, keyed by a key derived from the admin
token: the token never reaches the browser after login (HttpOnly, SameSite=Strict
cookie), and changing the admin token ends every session at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

COOKIE = "facedex_dashboard"


def _key(admin_token: str) -> bytes:
    return hashlib.sha256(b"facedex-dashboard-session\0" + admin_token.encode()).digest()


def _mac(admin_token: str, payload: str) -> str:
    return hmac.new(_key(admin_token), payload.encode(), hashlib.sha256).hexdigest()


def issue(admin_token: str, ttl_s: float) -> str:
    payload = f"{int(time.time() + ttl_s)}.{secrets.token_hex(8)}"
    return f"{payload}.{_mac(admin_token, payload)}"


def valid(admin_token: str, cookie: str | None) -> bool:
    if not cookie or cookie.count(".") != 2:
        return False
    payload, _, mac = cookie.rpartition(".")
    if not hmac.compare_digest(mac, _mac(admin_token, payload)):
        return False
    expiry = payload.split(".", 1)[0]
    return expiry.isdigit() and int(expiry) > time.time()


def token_ok(admin_token: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), admin_token.encode())  # type: ignore[union-attr]
