"""Bearer tokens of people: account tokens (from the Faces DB) and the admin token; shared by the API and the Index Manager.

Account tokens are looked up by their SHA-256 and cached per process for up to
``ttl_s``, but only while this process listens for revocations: deleting a
token NOTIFYs ``facedex_token_revoked`` in the same transaction, and every
process drops the entry as the notification arrives. When the listening
connection is lost the cache is bypassed until it is back (and cleared then), so
a revoked token is never served from a stale cache while the Faces DB answers.
While it does not (down or stalled), a token seen valid before is still served:
revoking one needs the Faces DB too, and matching keeps answering in an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from facedex.errors import Errors, FacedexError
from facedex.faces.store import TOKEN_REVOKED_CHANNEL, UNREACHABLE, FacesStore, bounded, hash_token
from facedex.internal_auth import token_matches

log = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, description="An account token (fdx_...), or the admin token where stated.")


def credentials(creds: HTTPAuthorizationCredentials | None) -> str:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise FacedexError(Errors.UNAUTHORIZED, "send 'Authorization: Bearer <token>'")
    return creds.credentials


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: an operator (admin or internal token: every account's objects) or one account."""

    account_id: uuid.UUID | None = None

    @property
    def operator(self) -> bool:
        return self.account_id is None


class TokenCache:
    """Token -> account, cached while revocations can be heard (see the module docstring)."""

    def __init__(
        self, store: FacesStore, database_url: str | None = None, ttl_s: float = 30.0, max_entries: int = 10_000,
        db_timeout_s: float = 2.0,
    ) -> None:
        self.store = store
        self.db_timeout_s = db_timeout_s
        self.database_url = database_url
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.listening = False
        self._entries: dict[bytes, tuple[uuid.UUID, float, float]] = {}  # hash -> (account, fresh until, expires)
        self._generation = 0  # bumped by every revocation: a lookup that raced one is not cached
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.database_url:
            self._task = asyncio.create_task(self._listen(), name="token-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _revoked(self, conn: object, pid: int, channel: str, payload: str) -> None:
        self._generation += 1
        with contextlib.suppress(ValueError):
            self._entries.pop(bytes.fromhex(payload), None)

    def _lost(self) -> None:
        """Revocations can no longer be heard: bypass the cache (kept only for a Faces DB outage)."""
        self.listening = False
        self._generation += 1

    async def _listen(self) -> None:
        assert self.database_url
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.database_url, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c: lost.set())
                await conn.add_listener(TOKEN_REVOKED_CHANNEL, self._revoked)
                self._generation += 1
                self._entries.clear()  # anything cached before we listened may have been revoked meanwhile
                self.listening = True
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), 5.0)
                        break
                    await bounded(conn.fetchval("SELECT 1"), 5.0)  # a silently dead or stalled link counts as lost
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("token revocation listener: %s: %s (retrying)", type(exc).__name__, exc)
            finally:
                self._lost()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=2)
            await asyncio.sleep(1.0)

    async def account(self, token: str) -> uuid.UUID | None:
        key = hash_token(token)
        now = time.monotonic()
        hit = self._entries.get(key)
        if hit is not None and hit[1] > now and self.listening:
            return hit[0]
        generation = self._generation
        try:
            found = await bounded(self.store.account_for_token(token), self.db_timeout_s)
        except UNREACHABLE as exc:
            if hit is not None and hit[2] > now:  # the Faces DB is down or stalled: the token was valid moments ago
                return hit[0]
            raise FacedexError(Errors.FACES_DB_UNAVAILABLE, f"cannot check the token: {type(exc).__name__}") from exc
        if found is None:
            return None
        account_id, expire_time = found
        if generation == self._generation:
            expires = float("inf")
            if expire_time is not None:
                expires = now + (expire_time - datetime.now(expire_time.tzinfo)).total_seconds()
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[key] = (account_id, min(now + self.ttl_s, expires), expires)
        return account_id


async def resolve_caller(
    creds: HTTPAuthorizationCredentials | None, tokens: TokenCache, admin_token: str | None, internal_token: str | None
) -> Caller:
    """The admin or internal token -> an operator; an account token -> that account; anything else -> 401 (10004)."""
    token = credentials(creds)
    if token_matches(token, admin_token) or token_matches(token, internal_token):
        return Caller()
    account_id = await tokens.account(token)
    if account_id is None:
        raise FacedexError(Errors.UNAUTHORIZED, "unknown, expired or revoked token")
    return Caller(account_id)
