"""Accounts: created by an admin; each gets a bearer token that scopes everything it does."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from facedex.api.auth import require_admin
from facedex.api.deps import Account, Store
from facedex.api.models import AccountCreate, AccountCreated, AccountOut
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


@router.post("/1/account/tokens", status_code=201, response_model=AccountCreated)
async def create_token(account: Account, store: Store) -> AccountCreated:
    """Another token for the same account."""
    return AccountCreated(account_id=account, token=await store.create_token(account, "api"))
