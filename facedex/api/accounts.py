"""Accounts: created by an admin; each holds bearer tokens (listed, created, revoked) that scope everything it does."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, Request, Response

from facedex.api.auth import require_admin
from facedex.api.deps import Account, Store
from facedex.api.models import AccountCreate, AccountCreated, AccountOut, TokenCreate, TokenCreated, TokenOut
from facedex.errors import Errors
from facedex.http import errors

router = APIRouter(tags=["accounts"])


@router.post(
    "/1/accounts", status_code=201, dependencies=[Depends(require_admin)], response_model=AccountCreated,
    responses=errors(Errors.FORBIDDEN),
)
async def create_account(body: AccountCreate, store: Store) -> AccountCreated:
    """Create an account and its first token (admin token required)."""
    account_id, token = await store.create_account(body.name)
    return AccountCreated(account_id=account_id, token=token)


@router.get("/1/account", response_model=AccountOut)
async def get_account(account: Account, store: Store) -> AccountOut:
    """The account the token belongs to."""
    return AccountOut(**dict(await store.get_account(account)))


@router.get("/1/account/tokens", response_model=list[TokenOut])
async def get_tokens(account: Account, store: Store) -> list[TokenOut]:
    """The account's tokens: ids and metadata, never the secrets (expired ones too, until deleted)."""
    return [TokenOut.model_validate(t, from_attributes=True) for t in await store.list_tokens(account)]


@router.post("/1/account/tokens", status_code=201, response_model=TokenCreated, responses=errors(Errors.TOKEN_LIMIT))
async def create_token(request: Request, account: Account, store: Store, body: TokenCreate | None = None) -> TokenCreated:
    """Another token for the same account, optionally expiring; at most ``max_tokens_per_account`` live ones (15002)."""
    body = body or TokenCreate()
    expires = datetime.now(UTC) + timedelta(seconds=body.expires_in_s) if body.expires_in_s else None
    row = await store.create_token(account, body.name, expires, request.app.state.settings.max_tokens_per_account)
    return TokenCreated.model_validate(row, from_attributes=True)


@router.delete("/1/account/tokens/{token_id}", status_code=204, responses=errors(Errors.TOKEN_NOT_FOUND))
async def delete_token(token_id: uuid.UUID, account: Account, store: Store) -> Response:
    """Revoke a token of this account; every API instance refuses it from the next request on."""
    await store.delete_token(account, token_id)
    return Response(status_code=204)
