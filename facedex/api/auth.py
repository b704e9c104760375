"""Bearer-token authentication: every request is bound to one account."""

from __future__ import annotations

import hmac
import time
import uuid

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from facedex.errors import Errors, FacedexError
from facedex.faces.store import UNREACHABLE, FacesStore, bounded

bearer = HTTPBearer(auto_error=False, description="An account token (fdx_...).")


class TokenCache:
    """Token -> account for a short while, so a request costs no extra DB round trip."""

    def __init__(self, store: FacesStore, ttl_s: float = 30.0, max_entries: int = 10_000, db_timeout_s: float = 2.0) -> None:
        self.store = store
        self.db_timeout_s = db_timeout_s  # an expired entry is still used while the Faces DB does not answer
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[uuid.UUID, float]] = {}

    async def account(self, token: str) -> uuid.UUID | None:
        now = time.monotonic()
        hit = self._entries.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            account_id = await bounded(self.store.account_for_token(token), self.db_timeout_s)
        except UNREACHABLE as exc:
            if hit is not None:  # the Faces DB is down or stalled: the token was valid moments ago
                return hit[0]
            raise FacedexError(Errors.FACES_DB_UNAVAILABLE, f"cannot check the token: {type(exc).__name__}") from exc
        if account_id is not None:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[token] = (account_id, now + self.ttl_s)
        return account_id


def _credentials(creds: HTTPAuthorizationCredentials | None) -> str:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise FacedexError(Errors.UNAUTHORIZED, "send 'Authorization: Bearer <token>'")
    return creds.credentials


async def current_account(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> uuid.UUID:
    account_id = await request.app.state.tokens.account(_credentials(creds))
    if account_id is None:
        raise FacedexError(Errors.UNAUTHORIZED, "unknown token")
    return account_id


async def require_admin(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    admin_token = request.app.state.settings.admin_token
    if not admin_token:
        raise FacedexError(Errors.FORBIDDEN, "admin routes are off: set FACEDEX_ADMIN_TOKEN to use them")
    if not hmac.compare_digest(_credentials(creds), admin_token):
        raise FacedexError(Errors.FORBIDDEN, "not the admin token")
