"""Bearer-token authentication of the API: every request is bound to one account (facedex.auth does the lookup)."""

from __future__ import annotations

import uuid

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from facedex.auth import TokenCache, bearer, credentials
from facedex.errors import Errors, FacedexError
from facedex.internal_auth import token_matches

__all__ = ["TokenCache", "current_account", "require_admin"]


async def current_account(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> uuid.UUID:
    account_id = await request.app.state.tokens.account(credentials(creds))
    if account_id is None:
        raise FacedexError(Errors.UNAUTHORIZED, "unknown, expired or revoked token")
    return account_id


async def require_admin(request: Request, creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    admin_token = request.app.state.settings.admin_token
    if not admin_token:
        raise FacedexError(Errors.FORBIDDEN, "admin routes are off: set FACEDEX_ADMIN_TOKEN to use them")
    if not token_matches(credentials(creds), admin_token):
        raise FacedexError(Errors.FORBIDDEN, "not the admin token")
