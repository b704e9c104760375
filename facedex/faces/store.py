"""The Faces DB: accounts, lists, faces, descriptors, list membership and the change log.

Every public method that a client request reaches takes the caller's
``account_id`` and filters on it, so one account can never read or change
another's rows: a foreign id behaves exactly like a missing one (404).

Membership changes go through :meth:`FacesStore._log_changes`, which bumps the
list's ``change_seq`` with an ``UPDATE`` (taking the list row lock until
commit), appends the matching rows to ``list_changes`` and, with Redis
configured, announces the new head before commit (:mod:`facedex.redis.heads`;
a write whose head cannot be announced is rolled back). Matchers tail that
log to stay exact while lists change.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

import asyncpg
import numpy as np

from facedex import descriptors
from facedex.errors import Errors, FacedexError
from facedex.faces.copy import binary_stream, copy_binary, parse_binary, uuids
from facedex.ids import as_block, new_ids, uuid7_block
from facedex.redis.heads import ChangeHeads

ATTACH, DETACH, UPDATE = 1, 2, 3
T = TypeVar("T")
ANNOUNCE_TIMEOUT_S = 2.0  # a write waits this long for Redis to take its head (it holds the list's row lock meanwhile)


TOKEN_REVOKED_CHANNEL = "facedex_token_revoked"  # NOTIFY payload: the revoked token's hash, hex


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(slots=True)
class TokenRow:
    token_id: uuid.UUID
    account_id: uuid.UUID
    name: str
    create_time: datetime
    expire_time: datetime | None
    token: str | None = None  # the secret: only right after creation


@dataclass(slots=True)
class ListRow:
    list_id: uuid.UUID
    account_id: uuid.UUID
    user_data: str
    create_time: datetime
    last_update_time: datetime
    face_count: int
    change_seq: int


@dataclass(slots=True)
class FaceRow:
    face_id: uuid.UUID
    account_id: uuid.UUID
    external_id: str | None
    user_data: str
    create_time: datetime
    last_update_time: datetime
    descriptor_versions: list[int] = field(default_factory=list)
    list_ids: list[uuid.UUID] = field(default_factory=list)


@dataclass(slots=True)
class NewFace:
    external_id: str | None = None
    user_data: str = ""
    descriptors: dict[int, np.ndarray] = field(default_factory=dict)  # version -> normalised vector
    list_ids: list[uuid.UUID] = field(default_factory=list)  # lists to attach this face to


@dataclass(slots=True)
class Change:
    seq: int
    op: int
    face_id: bytes  # 16 raw bytes


@dataclass(slots=True)
class FaceMeta:
    """What candidate filters need of each face (brute-force Matcher), aligned with a page's or a delta's rows."""

    create_us: np.ndarray  # (n,) int64, unix microseconds
    external_ids: list[str | None]
    user_data: list[str]

    @classmethod
    def of(cls, rows: Sequence[asyncpg.Record]) -> FaceMeta:
        return cls(
            np.fromiter((r["create_us"] for r in rows), np.int64, len(rows)),
            [r["external_id"] for r in rows],
            [r["user_data"] for r in rows],
        )


@dataclass(slots=True)
class ListDelta:
    """What changed in a list between two sequence numbers, collapsed to the final state per face."""

    head: int
    removed: list[bytes]  # face ids (16 bytes) no longer in the list (or without a descriptor)
    upserted_ids: list[bytes]
    upserted: np.ndarray  # (len(upserted_ids), dim) float32
    meta: FaceMeta | None = None  # the upserted faces' metadata


# a face's filterable metadata; create_time as integer unix microseconds (exact: extract() is numeric)
_META_COLS = "(extract(epoch FROM f.create_time) * 1000000)::int8 AS create_us, f.external_id, f.user_data"
_LIST_COLS = "list_id, account_id, user_data, create_time, last_update_time, face_count, change_seq"
_TOKEN_COLS = "token_id, account_id, name, create_time, expire_time"
_FACE_COLS = "face_id, account_id, external_id, user_data, create_time, last_update_time"

# The faces a list's changes after $2 touched, each with its final state in list $1 for descriptor version $3 (no
# descriptor: detached or deleted). Each face is looked up by key (LATERAL ... LIMIT 1, which the planner cannot
# flatten into a join), whatever the statistics say: as a join of sets the planner went by statistics (absent after
# a bulk import while autovacuum lags or is off) and hashed whole tables, 2.3 s for a one-face delta beside 650k
# faces (measured), longer than a matcher may wait.
DELTA_SQL = (
    "SELECT uuid_send(t.face_id) AS fid, x.* FROM"
    " (SELECT DISTINCT face_id FROM list_changes WHERE list_id=$1 AND seq > $2) t"
    f" LEFT JOIN LATERAL (SELECT d.descriptor, {_META_COLS} FROM list_faces l"
    " JOIN descriptors d ON d.face_id=l.face_id AND d.version=$3 JOIN faces f ON f.face_id=l.face_id"
    " WHERE l.list_id=$1 AND l.face_id=t.face_id LIMIT 1) x ON true"
)
# a face's descriptor versions and lists, computed in the same query as its row (one query per page of faces)
_FACE_DETAIL = (
    "ARRAY(SELECT version FROM descriptors d WHERE d.face_id=f.face_id ORDER BY version) AS descriptor_versions,"
    " ARRAY(SELECT list_id FROM list_faces l WHERE l.face_id=f.face_id ORDER BY list_id) AS list_ids"
)


# What an unreachable, restarting or stalled PostgreSQL raises (matchers then answer stale or refuse).
UNREACHABLE = (TimeoutError, OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
               asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError,
               asyncpg.InternalClientError)  # a pooled connection left mid-operation by a cancelled query


_abandoned: set[asyncio.Task[object]] = set()


async def bounded(aw: Awaitable[T], timeout: float) -> T:
    """``aw``'s result within ``timeout`` seconds, else TimeoutError.

    Why not ``asyncio.timeout``: a cancelled asyncpg query cleans up (waits for the server to confirm the
    cancel, rolls back, resets the pooled connection) before the cancellation returns, so against a stalled
    server it hangs anyway. Here the call runs as a task of its own; past the deadline it is cancelled and
    left to clean up in the background while the caller goes on.
    """
    task: asyncio.Task[T] = asyncio.ensure_future(aw)
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout)
    except (TimeoutError, asyncio.CancelledError):  # the caller gave up: so does the call, in the background
        task.cancel()
        _abandoned.add(task)  # type: ignore[arg-type]
        task.add_done_callback(lambda t: (_abandoned.discard(t), t.cancelled() or t.exception()))  # type: ignore[arg-type]
        raise


def delta_timeout(head_timeout_s: float) -> float:
    """The bound on a change-log delta read by a matcher whose head read is bounded by ``head_timeout_s``: a delta
    can carry thousands of descriptors, so ten times as long, at least 5 s."""
    return max(10 * head_timeout_s, 5.0)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A released connection keeps its session: facedex changes no session state on pooled connections (no SET,
    no LISTEN, no advisory lock outlives its use), so asyncpg's default reset query (UNLISTEN *, RESET ALL, ...)
    would be a round trip per release for nothing: 6 % of a loaded Indexed Matcher's CPU (py-spy). asyncpg still
    rolls back a transaction left open."""


async def create_pool(url: str, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size, reset=_keep_session)
    assert pool is not None
    return pool


class FacesStore:
    def __init__(self, pool: asyncpg.Pool, heads: ChangeHeads | None = None) -> None:
        """``heads``: where list changes are announced (every writer of a deployment with Redis must pass it)."""
        self.pool = pool
        self.heads = heads

    async def _announce(self, list_id: uuid.UUID, head: int | None) -> None:
        """Inside the writing transaction (``head`` None: the list is deleted): a failure raises, so the write rolls
        back instead of being acknowledged unannounced (matchers would answer without it)."""
        if self.heads is None:
            return
        announce = self.heads.gone(list_id) if head is None else self.heads.announce(list_id, head)
        try:
            await asyncio.wait_for(announce, ANNOUNCE_TIMEOUT_S)
        except Exception as exc:  # Redis down, stalled or refusing: nothing is committed
            raise FacedexError(Errors.CHANGES_NOT_ANNOUNCED, f"list {list_id}: {type(exc).__name__}: {exc}") from exc

    async def _write(self, fn: Callable[[asyncpg.Connection], Awaitable[T]], attempts: int = 5) -> T:
        """Run ``fn`` in a transaction; retry when PostgreSQL aborts it to break a deadlock.

        Attach locks list then faces, delete locks faces then lists: opposite orders,
        so rare deadlocks are expected and resolved by running the loser again.
        """
        for attempt in range(attempts):
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    return await fn(conn)
            except asyncpg.DeadlockDetectedError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ accounts
    async def create_account(self, name: str) -> tuple[uuid.UUID, str]:
        """Create an account with its first token; returns (account_id, token). The token is not stored."""
        account_id = uuid.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO accounts (account_id, name) VALUES ($1, $2)", account_id, name)
            token = await self._insert_token(conn, account_id, "default")
        return account_id, token

    async def create_token(
        self, account_id: uuid.UUID, name: str, expire_time: datetime | None = None, max_live: int | None = None
    ) -> TokenRow:
        """A new token for the account; refused (15002) when it already holds ``max_live`` unexpired tokens.

        The account row is locked first, so concurrent creations cannot both pass the count.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            if await conn.fetchval("SELECT 1 FROM accounts WHERE account_id=$1 FOR UPDATE", account_id) is None:
                raise FacedexError(Errors.ACCOUNT_NOT_FOUND)
            if max_live is not None:
                live = await conn.fetchval(
                    "SELECT count(*) FROM tokens WHERE account_id=$1 AND (expire_time IS NULL OR expire_time > now())",
                    account_id,
                )
                if live >= max_live:
                    raise FacedexError(Errors.TOKEN_LIMIT, f"the account already has {live} live tokens (at most {max_live})")
            token = "fdx_" + secrets.token_urlsafe(32)
            row = await conn.fetchrow(
                f"INSERT INTO tokens (token_hash, account_id, name, expire_time) VALUES ($1, $2, $3, $4) RETURNING {_TOKEN_COLS}",
                hash_token(token), account_id, name, expire_time,
            )
        return TokenRow(**row, token=token)

    @staticmethod
    async def _insert_token(conn: asyncpg.Connection, account_id: uuid.UUID, name: str) -> str:
        token = "fdx_" + secrets.token_urlsafe(32)
        await conn.execute(
            "INSERT INTO tokens (token_hash, account_id, name) VALUES ($1, $2, $3)", hash_token(token), account_id, name
        )
        return token

    async def account_for_token(self, token: str) -> tuple[uuid.UUID, datetime | None] | None:
        """(account, expiry) of a live token; None for an unknown, revoked or expired one."""
        row = await self.pool.fetchrow(
            "SELECT account_id, expire_time FROM tokens WHERE token_hash = $1 AND (expire_time IS NULL OR expire_time > now())",
            hash_token(token),
        )
        return (row["account_id"], row["expire_time"]) if row is not None else None

    async def list_tokens(self, account_id: uuid.UUID) -> list[TokenRow]:
        rows = await self.pool.fetch(
            f"SELECT {_TOKEN_COLS} FROM tokens WHERE account_id=$1 ORDER BY create_time, token_id", account_id
        )
        return [TokenRow(**r) for r in rows]

    async def delete_token(self, account_id: uuid.UUID, token_id: uuid.UUID) -> None:
        """Revoke a token: deleted, and announced to every API instance in the same transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            digest = await conn.fetchval(
                "DELETE FROM tokens WHERE token_id=$1 AND account_id=$2 RETURNING token_hash", token_id, account_id
            )
            if digest is None:
                raise FacedexError(Errors.TOKEN_NOT_FOUND, f"token {token_id} not found")
            await conn.execute("SELECT pg_notify($1, $2)", TOKEN_REVOKED_CHANNEL, bytes(digest).hex())

    async def get_account(self, account_id: uuid.UUID) -> asyncpg.Record:
        row = await self.pool.fetchrow("SELECT account_id, name, create_time FROM accounts WHERE account_id=$1", account_id)
        if row is None:
            raise FacedexError(Errors.ACCOUNT_NOT_FOUND)
        return row

    # --------------------------------------------------------------------- lists
    async def create_list(self, account_id: uuid.UUID, user_data: str = "") -> ListRow:
        row = await self.pool.fetchrow(
            f"INSERT INTO lists (list_id, account_id, user_data) VALUES ($1, $2, $3) RETURNING {_LIST_COLS}",
            uuid.uuid4(),
            account_id,
            user_data,
        )
        return ListRow(**row)

    async def get_list(self, account_id: uuid.UUID, list_id: uuid.UUID) -> ListRow:
        row = await self.pool.fetchrow(
            f"SELECT {_LIST_COLS} FROM lists WHERE list_id=$1 AND account_id=$2", list_id, account_id
        )
        if row is None:
            raise FacedexError(Errors.LIST_NOT_FOUND, f"list {list_id} not found")
        return ListRow(**row)

    async def get_lists(self, account_id: uuid.UUID, page: int, page_size: int) -> list[ListRow]:
        rows = await self.pool.fetch(
            f"SELECT {_LIST_COLS} FROM lists WHERE account_id=$1 ORDER BY create_time, list_id LIMIT $2 OFFSET $3",
            account_id,
            page_size,
            (page - 1) * page_size,
        )
        return [ListRow(**r) for r in rows]

    async def update_list(self, account_id: uuid.UUID, list_id: uuid.UUID, user_data: str) -> ListRow:
        row = await self.pool.fetchrow(
            f"UPDATE lists SET user_data=$3, last_update_time=now() WHERE list_id=$1 AND account_id=$2 RETURNING {_LIST_COLS}",
            list_id,
            account_id,
            user_data,
        )
        if row is None:
            raise FacedexError(Errors.LIST_NOT_FOUND, f"list {list_id} not found")
        return ListRow(**row)

    async def delete_list(self, account_id: uuid.UUID, list_id: uuid.UUID) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            status = await conn.execute("DELETE FROM lists WHERE list_id=$1 AND account_id=$2", list_id, account_id)
            if status == "DELETE 0":
                raise FacedexError(Errors.LIST_NOT_FOUND, f"list {list_id} not found")
            await self._announce(list_id, None)

    # --------------------------------------------------------------------- faces
    async def create_faces(
        self, account_id: uuid.UUID, faces: Sequence[NewFace], list_ids: Sequence[uuid.UUID] = ()
    ) -> list[uuid.UUID]:
        """Create faces (with descriptors), attach each to ``list_ids`` and its own lists; all or nothing."""
        face_ids = new_ids(len(faces))
        desc_rows = [
            (fid, version, descriptors.to_bytes(version, vec))
            for fid, face in zip(face_ids, faces, strict=True)
            for version, vec in face.descriptors.items()
        ]
        members: dict[uuid.UUID, list[uuid.UUID]] = {lid: list(face_ids) for lid in list_ids}
        for fid, face in zip(face_ids, faces, strict=True):
            for lid in face.list_ids:
                if lid not in list_ids:
                    members.setdefault(lid, []).append(fid)
        async with self.pool.acquire() as conn, conn.transaction():
            for list_id in sorted(members):
                await self._check_list(conn, account_id, list_id)
            await conn.copy_records_to_table(
                "faces",
                records=[(fid, account_id, f.external_id, f.user_data) for fid, f in zip(face_ids, faces, strict=True)],
                columns=["face_id", "account_id", "external_id", "user_data"],
            )
            if desc_rows:
                await conn.copy_records_to_table(
                    "descriptors", records=desc_rows, columns=["face_id", "version", "descriptor"]
                )
            for list_id in sorted(members):  # fixed lock order: no deadlock between concurrent batches
                await self._attach_new(conn, list_id, list(dict.fromkeys(members[list_id])))
        return face_ids

    async def import_matrix(
        self,
        account_id: uuid.UUID,
        list_id: uuid.UUID,
        version: int,
        matrix: np.ndarray,
        external_ids: Sequence[str | None] | None = None,
    ) -> list[uuid.UUID]:
        """Bulk path for ``facedex import``: one COPY per table, one transaction, rows already normalised."""
        n = matrix.shape[0]
        block = uuid7_block(n)
        face_ids = [uuid.UUID(bytes=row.tobytes()) for row in block]
        raw = np.ascontiguousarray(matrix, dtype=descriptors.get_version(version).dtype)
        row = f"V{raw.shape[1] * raw.itemsize}"  # one descriptor as a fixed-width bytea
        desc_stream = binary_stream(n, [("V16", uuids(block)), (">i4", version), (row, raw.view(row).ravel())])
        ext = external_ids if external_ids is not None else [None] * n
        async with self.pool.acquire() as conn, conn.transaction():
            await self._check_list(conn, account_id, list_id)
            await conn.copy_records_to_table(
                "faces",
                records=[(fid, account_id, e) for fid, e in zip(face_ids, ext, strict=True)],
                columns=["face_id", "account_id", "external_id"],
            )
            await copy_binary(conn, "descriptors", ["face_id", "version", "descriptor"], desc_stream)
            await self._attach_new(conn, list_id, block)
        return face_ids

    async def list_account(self, list_id: uuid.UUID) -> uuid.UUID:
        """Owner of a list, for admin tools that act on a list by id."""
        account_id = await self.pool.fetchval("SELECT account_id FROM lists WHERE list_id=$1", list_id)
        if account_id is None:
            raise FacedexError(Errors.LIST_NOT_FOUND, f"list {list_id} not found")
        return account_id

    async def get_face(self, account_id: uuid.UUID, face_id: uuid.UUID) -> FaceRow:
        row = await self.pool.fetchrow(
            f"SELECT {_FACE_COLS}, {_FACE_DETAIL} FROM faces f WHERE face_id=$1 AND account_id=$2",
            face_id,
            account_id,
        )
        if row is None:
            raise FacedexError(Errors.FACE_NOT_FOUND, f"face {face_id} not found")
        return FaceRow(**row)

    async def get_faces(
        self,
        account_id: uuid.UUID,
        page: int,
        page_size: int,
        list_id: uuid.UUID | None = None,
        external_id: str | None = None,
    ) -> list[FaceRow]:
        where = ["f.account_id=$1"]
        args: list[object] = [account_id]
        if list_id is not None:
            await self.get_list(account_id, list_id)
            args.append(list_id)
            where.append(f"EXISTS (SELECT 1 FROM list_faces l WHERE l.face_id=f.face_id AND l.list_id=${len(args)})")
        if external_id is not None:
            args.append(external_id)
            where.append(f"f.external_id=${len(args)}")
        args += [page_size, (page - 1) * page_size]
        rows = await self.pool.fetch(
            f"SELECT {_FACE_COLS}, {_FACE_DETAIL} FROM faces f WHERE {' AND '.join(where)}"
            f" ORDER BY create_time, face_id LIMIT ${len(args) - 1} OFFSET ${len(args)}",
            *args,
        )
        return [FaceRow(**r) for r in rows]

    async def update_face(
        self, account_id: uuid.UUID, face_id: uuid.UUID, external_id: str | None, user_data: str | None
    ) -> FaceRow:
        """Change a face's external id and/or user data. Lists holding the face log an update, so the matchers'
        caches (which filter on these fields) re-read the face before their next search."""

        async def tx(conn: asyncpg.Connection) -> None:
            # face row first, then its lists (as delete_faces does; against attach's order, _write retries a deadlock)
            status = await conn.execute(
                "UPDATE faces SET external_id=COALESCE($3, external_id), user_data=COALESCE($4, user_data),"
                " last_update_time=now() WHERE face_id=$1 AND account_id=$2",
                face_id,
                account_id,
                external_id,
                user_data,
            )
            if status == "UPDATE 0":
                raise FacedexError(Errors.FACE_NOT_FOUND, f"face {face_id} not found")
            if external_id is not None or user_data is not None:
                for row in await conn.fetch("SELECT list_id FROM list_faces WHERE face_id=$1 ORDER BY list_id", face_id):
                    await self._log_changes(conn, row["list_id"], UPDATE, [face_id], 0)

        await self._write(tx)
        return await self.get_face(account_id, face_id)

    async def delete_faces(self, account_id: uuid.UUID, face_ids: Sequence[uuid.UUID]) -> None:
        """Delete faces; each is first detached from its lists (logged), so matchers drop it."""

        async def tx(conn: asyncpg.Connection) -> None:
            # FOR UPDATE on the faces waits out (and then blocks) attaches of them, which take FOR SHARE
            await self._check_faces(conn, account_id, face_ids, lock="FOR UPDATE")
            memberships = await conn.fetch(
                "SELECT list_id, array_agg(face_id) AS face_ids FROM list_faces WHERE face_id = ANY($1::uuid[])"
                " GROUP BY list_id ORDER BY list_id",
                list(face_ids),
            )
            for m in memberships:
                await self._log_changes(conn, m["list_id"], DETACH, m["face_ids"], -len(m["face_ids"]))
            await conn.execute("DELETE FROM faces WHERE face_id = ANY($1::uuid[])", list(face_ids))

        await self._write(tx)

    async def put_descriptor(self, account_id: uuid.UUID, face_id: uuid.UUID, version: int, vec: np.ndarray) -> None:
        """Set (or replace) a face's descriptor of one version; lists holding the face log an update."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._check_faces(conn, account_id, [face_id])
            await conn.execute(
                "INSERT INTO descriptors (face_id, version, descriptor) VALUES ($1, $2, $3)"
                " ON CONFLICT (face_id, version) DO UPDATE SET descriptor=EXCLUDED.descriptor, create_time=now()",
                face_id,
                version,
                descriptors.to_bytes(version, vec),
            )
            for list_id in await conn.fetch(
                "SELECT list_id FROM list_faces WHERE face_id=$1 ORDER BY list_id", face_id
            ):
                await self._log_changes(conn, list_id["list_id"], UPDATE, [face_id], 0)

    async def get_descriptors(
        self, account_id: uuid.UUID, face_ids: Sequence[uuid.UUID], version: int
    ) -> dict[uuid.UUID, np.ndarray]:
        """Descriptors of the caller's faces; raises if a face is missing or lacks the version."""
        rows = await self.pool.fetch(
            "SELECT f.face_id, d.descriptor FROM faces f"
            " LEFT JOIN descriptors d ON d.face_id=f.face_id AND d.version=$3"
            " WHERE f.face_id = ANY($1::uuid[]) AND f.account_id=$2",
            list(face_ids),
            account_id,
            version,
        )
        found = {r["face_id"]: r["descriptor"] for r in rows}
        missing = [str(f) for f in face_ids if f not in found]
        if missing:
            raise FacedexError(Errors.FACE_NOT_FOUND, f"faces not found: {', '.join(missing[:10])}")
        lacking = [str(f) for f, d in found.items() if d is None]
        if lacking:
            raise FacedexError(
                Errors.FACE_NO_DESCRIPTOR, f"faces without a version {version} descriptor: {', '.join(lacking[:10])}"
            )
        return {f: descriptors.from_bytes(version, d) for f, d in found.items()}

    # ---------------------------------------------------------------- membership
    async def attach(self, account_id: uuid.UUID, list_id: uuid.UUID, face_ids: Sequence[uuid.UUID]) -> int:
        """Attach faces to a list; already attached faces are left as they are. Returns how many were new."""

        async def tx(conn: asyncpg.Connection) -> int:
            await self._check_list(conn, account_id, list_id)
            await self._check_faces(conn, account_id, face_ids, lock="FOR SHARE")
            new = await conn.fetch(
                "SELECT f FROM unnest($2::uuid[]) AS f"
                " WHERE NOT EXISTS (SELECT 1 FROM list_faces l WHERE l.list_id=$1 AND l.face_id=f)",
                list_id,
                list(dict.fromkeys(face_ids)),
            )
            return await self._attach_new(conn, list_id, [r["f"] for r in new])

        return await self._write(tx)

    async def detach(self, account_id: uuid.UUID, list_id: uuid.UUID, face_ids: Sequence[uuid.UUID]) -> int:
        """Detach faces from a list; faces not in it are ignored. Returns how many were removed."""
        async with self.pool.acquire() as conn, conn.transaction():
            await self._check_list(conn, account_id, list_id)
            removed = await conn.fetch(
                "DELETE FROM list_faces WHERE list_id=$1 AND face_id = ANY($2::uuid[]) RETURNING face_id",
                list_id,
                list(face_ids),
            )
            ids = [r["face_id"] for r in removed]
            if ids:
                await self._log_changes(conn, list_id, DETACH, ids, -len(ids))
            return len(ids)

    async def _attach_new(
        self, conn: asyncpg.Connection, list_id: uuid.UUID, face_ids: Sequence[uuid.UUID] | np.ndarray
    ) -> int:
        block = face_ids if isinstance(face_ids, np.ndarray) else as_block(list(face_ids))
        n = block.shape[0]
        if n == 0:
            return 0
        first = await self._log_changes(conn, list_id, ATTACH, block, n)
        stream = binary_stream(
            n, [("V16", list_id.bytes), ("V16", uuids(block)), (">i8", np.arange(first, first + n, dtype=np.int64))]
        )
        await copy_binary(conn, "list_faces", ["list_id", "face_id", "link_seq"], stream)
        return n

    async def _log_changes(
        self,
        conn: asyncpg.Connection,
        list_id: uuid.UUID,
        op: int,
        face_ids: Sequence[uuid.UUID] | np.ndarray,
        count_delta: int,
    ) -> int:
        """Append changes to a list's log under its row lock; returns the first sequence number used."""
        block = face_ids if isinstance(face_ids, np.ndarray) else as_block(list(face_ids))
        n = block.shape[0]
        head = await conn.fetchval(
            "UPDATE lists SET change_seq = change_seq + $2, face_count = face_count + $3, last_update_time = now()"
            " WHERE list_id=$1 RETURNING change_seq",
            list_id,
            n,
            count_delta,
        )
        await self._announce(list_id, head)
        first = head - n + 1
        stream = binary_stream(
            n,
            [("V16", list_id.bytes), (">i8", np.arange(first, first + n, dtype=np.int64)), (">i2", op), ("V16", uuids(block))],
        )
        await copy_binary(conn, "list_changes", ["list_id", "seq", "op", "face_id"], stream)
        return first

    @staticmethod
    async def _check_list(conn: asyncpg.Connection, account_id: uuid.UUID, list_id: uuid.UUID) -> None:
        """Check the caller owns the list and lock its row until commit: membership writers of one list
        run one at a time, so "which faces are new" and the sequence numbers they get cannot race."""
        if not await conn.fetchval(
            "SELECT 1 FROM lists WHERE list_id=$1 AND account_id=$2 FOR UPDATE", list_id, account_id
        ):
            raise FacedexError(Errors.LIST_NOT_FOUND, f"list {list_id} not found")

    @staticmethod
    async def _check_faces(
        conn: asyncpg.Connection, account_id: uuid.UUID, face_ids: Iterable[uuid.UUID], lock: str = ""
    ) -> None:
        """Check the caller owns every face; optionally lock them (FOR SHARE / FOR UPDATE) until commit."""
        wanted = sorted(set(face_ids))
        rows = await conn.fetch(
            f"SELECT face_id FROM faces WHERE face_id = ANY($1::uuid[]) AND account_id=$2 ORDER BY face_id {lock}",
            wanted,
            account_id,
        )
        found = {r["face_id"] for r in rows}
        missing = [str(f) for f in wanted if f not in found]
        if missing:
            if len(wanted) == 1:
                raise FacedexError(Errors.FACE_NOT_FOUND, f"face {missing[0]} not found")
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise FacedexError(Errors.FACES_NOT_FOUND, f"faces not found: {shown}")

    # ------------------------------------------------------------ matcher reads
    async def account_list_ids(self, account_id: uuid.UUID) -> set[str]:
        """Ids (as strings) of every list of the account: the Index Manager scopes tasks and indexes with them."""
        return {str(r[0]) for r in await self.pool.fetch("SELECT list_id FROM lists WHERE account_id=$1", account_id)}

    async def list_head(self, list_id: uuid.UUID, timeout: float | None = None) -> tuple[uuid.UUID, int, int] | None:
        """(account_id, change_seq, face_count) of a list, or None if it does not exist.

        ``timeout`` bounds the whole call (waiting for a pooled connection too): matchers ask before every
        search, and an unreachable Faces DB must make them answer stale or refuse, not hang.
        """
        sql = "SELECT account_id, change_seq, face_count FROM lists WHERE list_id=$1"
        if timeout is None:
            row = await self.pool.fetchrow(sql, list_id)
        else:
            row = await bounded(self.pool.fetchrow(sql, list_id, timeout=timeout), timeout)
        return None if row is None else (row["account_id"], row["change_seq"], row["face_count"])

    async def lists_at_least(self, min_faces: int) -> list[tuple[uuid.UUID, int, int]]:
        """(list_id, change_seq, face_count) of every list with at least ``min_faces`` faces (background indexing)."""
        rows = await self.pool.fetch(
            "SELECT list_id, change_seq, face_count FROM lists WHERE face_count >= $1 ORDER BY face_count DESC", min_faces
        )
        return [(r["list_id"], r["change_seq"], r["face_count"]) for r in rows]

    async def lists_by_id(self, list_ids: Sequence[uuid.UUID]) -> list[tuple[uuid.UUID, int, int]]:
        rows = await self.pool.fetch(
            "SELECT list_id, change_seq, face_count FROM lists WHERE list_id = ANY($1::uuid[])", list(list_ids)
        )
        return [(r["list_id"], r["change_seq"], r["face_count"]) for r in rows]

    async def snapshot(
        self, list_id: uuid.UUID, version: int, page: int = 100_000
    ) -> AsyncIterator[tuple[int, np.ndarray, np.ndarray]]:
        """Stream a list's members with descriptors of ``version`` as consistent pages.

        Yields ``(head, face_ids (n, 16) uint8, vectors (n, dim))`` as zero-copy views
        of the page's bytes (they keep them alive); ``head``
        is the change sequence the snapshot reflects, the same for every page (one
        REPEATABLE READ transaction). Pages are binary COPY parsed by numpy, keyed
        on the membership primary key, so loading 1M faces is bound by PostgreSQL.
        """
        async for head, ids, vecs, _ in self._pages(list_id, version, page, meta=False):
            yield head, ids, vecs

    async def snapshot_with_meta(
        self, list_id: uuid.UUID, version: int, page: int = 100_000
    ) -> AsyncIterator[tuple[int, np.ndarray, np.ndarray, FaceMeta]]:
        """:meth:`snapshot` plus what candidate filters need of each row (the brute-force Matcher's cache)."""
        async for head, ids, vecs, meta in self._pages(list_id, version, page, meta=True):
            assert meta is not None
            yield head, ids, vecs, meta

    async def _pages(
        self, list_id: uuid.UUID, version: int, page: int, meta: bool
    ) -> AsyncIterator[tuple[int, np.ndarray, np.ndarray, FaceMeta | None]]:
        spec = descriptors.get_version(version)
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            head = await conn.fetchval("SELECT change_seq FROM lists WHERE list_id=$1", list_id)
            if head is None:
                return
            after = uuid.UUID(int=0)
            while True:
                buf = io.BytesIO()
                await conn.copy_from_query(
                    "SELECT l.face_id, d.descriptor FROM list_faces l"
                    " JOIN descriptors d ON d.face_id=l.face_id AND d.version=$2"
                    " WHERE l.list_id=$1 AND l.face_id > $3 ORDER BY l.face_id LIMIT $4",
                    list_id,
                    version,
                    after,
                    page,
                    output=buf,
                    format="binary",
                )
                ids, raw = parse_binary(buf.getvalue(), [16, spec.nbytes])
                n = ids.shape[0]
                page_meta = None
                if meta:  # the same rows in the same order, in the same snapshot: one more query per page, none per face
                    rows = await conn.fetch(
                        f"SELECT {_META_COLS} FROM list_faces l"
                        " JOIN descriptors d ON d.face_id=l.face_id AND d.version=$2"
                        " JOIN faces f ON f.face_id=l.face_id"
                        " WHERE l.list_id=$1 AND l.face_id > $3 ORDER BY l.face_id LIMIT $4",
                        list_id,
                        version,
                        after,
                        page,
                    )
                    page_meta = FaceMeta.of(rows)
                    assert len(page_meta.user_data) == n, "metadata rows do not match the page"
                yield head, ids, raw.view(spec.dtype), page_meta  # views: the consumer copies once, into its own buffer
                if n < page:
                    return
                after = uuid.UUID(bytes=ids[-1].tobytes())

    async def delta(self, list_id: uuid.UUID, version: int, since: int, timeout: float | None = None) -> ListDelta | None:
        """Changes after sequence ``since``, collapsed to each touched face's final state (metadata included).

        ``timeout`` bounds the whole call, waiting for a pooled connection too (:func:`bounded`): matchers read a
        delta while a request waits, and a stalled Faces DB must make them answer stale, not hang.
        """
        read = self._delta(list_id, version, since)
        return await (read if timeout is None else bounded(read, timeout))

    async def _delta(self, list_id: uuid.UUID, version: int, since: int) -> ListDelta | None:
        spec = descriptors.get_version(version)
        async with self.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            head = await conn.fetchval("SELECT change_seq FROM lists WHERE list_id=$1", list_id)
            if head is None:
                return None
            rows = await conn.fetch(
                DELTA_SQL,
                list_id,
                since,
                version,
            )
        removed = [r["fid"] for r in rows if r["descriptor"] is None]
        kept = [r for r in rows if r["descriptor"] is not None]
        vecs = np.frombuffer(b"".join(r["descriptor"] for r in kept), dtype=spec.dtype).reshape(-1, spec.dim)
        return ListDelta(head, removed, [r["fid"] for r in kept], vecs.astype(np.float32, copy=False), FaceMeta.of(kept))

    async def face_targets(
        self, account_id: uuid.UUID, face_ids: Sequence[uuid.UUID], with_lists: bool
    ) -> dict[uuid.UUID, asyncpg.Record]:
        """external_id, user_data, create_time (and list_ids) of the caller's faces: one query for every hit of a
        matching request. A face deleted since it matched is absent."""
        detail = ", ARRAY(SELECT list_id FROM list_faces l WHERE l.face_id=f.face_id ORDER BY list_id) AS list_ids" if with_lists else ""
        rows = await self.pool.fetch(
            f"SELECT face_id, external_id, user_data, create_time{detail} FROM faces f"
            " WHERE face_id = ANY($1::uuid[]) AND account_id=$2",
            list(face_ids),
            account_id,
        )
        return {r["face_id"]: r for r in rows}

    # ------------------------------------------------------------ dashboard reads (every account: admin only)
    async def all_lists_page(
        self, account_id: uuid.UUID | None, page: int, page_size: int
    ) -> tuple[int, list[asyncpg.Record]]:
        """(total, one page of lists with their account's name), oldest first; paged in SQL so 1,000s of lists cost one page."""
        where, args = ("WHERE l.account_id=$1", [account_id]) if account_id else ("", [])
        total = await self.pool.fetchval(f"SELECT count(*) FROM lists l {where}", *args)
        rows = await self.pool.fetch(
            f"SELECT l.list_id, l.account_id, a.name AS account_name, l.user_data, l.create_time, l.face_count, l.change_seq"
            f" FROM lists l JOIN accounts a USING (account_id) {where}"
            f" ORDER BY l.create_time, l.list_id LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}",
            *args, page_size, (page - 1) * page_size,
        )
        return total, rows

    async def list_versions(self, list_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[int]]:
        """Descriptor versions present in each list (one EXISTS probe per list and known version: stops at the first face)."""
        rows = await self.pool.fetch(
            "SELECT l.list_id, v.version FROM unnest($1::uuid[]) AS l(list_id) CROSS JOIN unnest($2::int[]) AS v(version)"
            " WHERE EXISTS (SELECT 1 FROM list_faces lf JOIN descriptors d ON d.face_id=lf.face_id AND d.version=v.version"
            " WHERE lf.list_id=l.list_id) ORDER BY 1, 2",
            list(list_ids), [v.version for v in descriptors.versions()],
        )
        out: dict[uuid.UUID, list[int]] = {}
        for r in rows:
            out.setdefault(r["list_id"], []).append(r["version"])
        return out
