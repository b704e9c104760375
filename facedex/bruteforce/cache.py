"""In-memory matrices of lists, kept exact by tailing the Faces DB change log.

Each request asks PostgreSQL for the list's change head (one indexed row); if
the cached matrix is behind, the missing changes are applied and the answer
comes from a search after them (a cached list is searched while the head is
read, and searched again only if it moved: :func:`facedex.bruteforce.app.match`).
So a face attached or detached before the request was sent is always seen as
such: the brute-force path is read-your-writes consistent.

Concurrent requests of one list share head reads (:class:`HeadReads`): a read
that began after a request arrived answers it as well as its own would, so
under load one PostgreSQL round trip serves every request that arrived while
the previous one ran, instead of one round trip each.

Searches run in worker threads (numpy releases the GIL) under a shared lock;
applying changes takes the lock exclusively, because detaches move rows.

Each row also keeps what candidate filters need (creation time, external id, user
data: :mod:`facedex.bruteforce.columns`), loaded with the snapshot and kept fresh by
the same log (a face's metadata change logs an update in each of its lists).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict

import numpy as np

from facedex import descriptors, wire
from facedex.bruteforce.columns import MetaColumns
from facedex.bruteforce.exact import half_scan_sound
from facedex.bruteforce.scans import ScanChoice
from facedex.errors import Errors, FacedexError
from facedex.faces.store import UNREACHABLE, FaceMeta, FacesStore, ListDelta, delta_timeout
from facedex.rwlock import RWLock

log = logging.getLogger(__name__)


class ListMatrix:
    """Descriptors of one list and one version: rows [0, n) are live, ids[i] is row i's face id.

    ``half_scan``: also hold the rows in fp16 (``half``, half as many bytes again), which a search of a few
    references may scan instead of the fp32 rows, exactly (:func:`facedex.bruteforce.exact.half_topk`), where it is
    measured faster (:mod:`facedex.bruteforce.scans`)."""

    def __init__(self, list_id: uuid.UUID, account_id: uuid.UUID, version: int, half_scan: bool = False) -> None:
        self.list_id = list_id
        self.account_id = account_id
        self.version = version
        self.dim = descriptors.get_version(version).dim
        self.vectors = np.empty((0, self.dim), np.float32)
        # not on a CPU whose fp16 kernel is outside the scan's error bound (checked once per process)
        self.half = np.empty((0, self.dim), np.float16) if half_scan and half_scan_sound() else None
        self.max_norm = 0.0  # of every row ever held: the fp16 scan's error bound scales with it
        self.ids = np.empty((0, 16), np.uint8)
        self.meta = MetaColumns()
        self.pos: dict[bytes, int] = {}
        self.n = 0
        self.head = 0
        self.scans = ScanChoice()  # fp16 copy or fp32 rows: which is faster here, measured on this list's searches
        self.lock = RWLock()
        self.last_used = time.monotonic()

    @property
    def nbytes(self) -> int:
        return self.vectors.nbytes + self.ids.nbytes + self.meta.nbytes + (0 if self.half is None else self.half.nbytes)

    def reserve(self, extra: int) -> None:
        need = self.n + extra
        if need <= self.vectors.shape[0]:
            return
        cap = max(need, int(self.vectors.shape[0] * 1.5), 1024)
        vectors = np.empty((cap, self.dim), np.float32)
        vectors[: self.n] = self.vectors[: self.n]
        ids = np.empty((cap, 16), np.uint8)
        ids[: self.n] = self.ids[: self.n]
        if self.half is not None:
            half = np.empty((cap, self.dim), np.float16)
            half[: self.n] = self.half[: self.n]
            self.half = half
        self.meta.grow(cap, self.n)
        self.vectors, self.ids = vectors, ids

    def _put(self, rows: slice | int, vecs: np.ndarray) -> None:
        """Write rows of descriptors (and their fp16 copies)."""
        self.vectors[rows] = vecs
        if self.half is not None:
            self.half[rows] = self.vectors[rows]
        if len(vecs):
            v = np.atleast_2d(vecs)
            norm = float(np.sqrt(np.einsum("ij,ij->i", v, v).max()))
            if norm != norm or norm > self.max_norm:  # a NaN stays (NaN > x is never true): no fp16 scan here again
                self.max_norm = norm

    def append(self, face_ids: np.ndarray, vecs: np.ndarray, meta: FaceMeta | None = None,
               picked: list[int] | None = None) -> None:
        """Add rows; ``face_ids`` is (n, 16) uint8, ``vecs`` is (n, dim); ``meta`` their filter fields (its
        entries ``picked``, else all)."""
        n = face_ids.shape[0]
        self.reserve(n)
        start = self.n
        self._put(slice(start, start + n), vecs)
        self.ids[start : start + n] = face_ids
        self.meta.put(slice(start, start + n), meta, picked)
        raw = face_ids.tobytes()
        self.pos.update(zip([raw[i : i + 16] for i in range(0, 16 * n, 16)], range(start, start + n)))
        self.n += n

    def remove(self, face_id: bytes) -> None:
        row = self.pos.pop(face_id, None)
        if row is None:
            return
        last = self.n - 1
        if row != last:
            self.vectors[row] = self.vectors[last]
            if self.half is not None:
                self.half[row] = self.half[last]
            self.ids[row] = self.ids[last]
            self.meta.move(last, row)
            self.pos[self.ids[row].tobytes()] = row
        self.n = last

    def apply(self, delta: ListDelta) -> None:
        for fid in delta.removed:
            self.remove(fid)
        new_ids: list[bytes] = []
        new_rows: list[int] = []
        for i, fid in enumerate(delta.upserted_ids):
            row = self.pos.get(fid)
            if row is None:
                new_ids.append(fid)
                new_rows.append(i)
            else:
                self._put(row, delta.upserted[i])
                self.meta.put(np.array([row]), delta.meta, [i])  # a metadata change (or a new descriptor)
        if new_ids:
            block = np.frombuffer(b"".join(new_ids), np.uint8).reshape(-1, 16)
            self.append(block, delta.upserted[new_rows], delta.meta, new_rows)
        self.meta.compact(self.n)
        self.head = delta.head

    def select(self, face_ids: list[bytes] | None, filters: wire.MatchFilters | None) -> np.ndarray | None:
        """Rows that pass the candidate filters, ascending; None when there is no filter (every row)."""
        rows = None
        if face_ids is not None:
            rows = np.unique(np.fromiter((self.pos[f] for f in face_ids if f in self.pos), dtype=np.int64))
        if filters is None:
            return rows
        keep = self.meta.mask(rows, self.n, filters)
        return np.flatnonzero(keep) if rows is None else rows[keep]

    def search(
        self, queries: np.ndarray, k: int, face_ids: list[bytes] | None = None, filters: wire.MatchFilters | None = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Exact top-k; returns (scores, face ids as (m, k, 16) uint8, faces searched). Run it under the read lock."""
        from facedex.bruteforce.exact import half_fits, half_topk, ranked, topk

        subset = self.select(face_ids, filters)
        if subset is None:
            m, n = queries.shape[0], self.n
            choosing = self.half is not None and half_fits(queries, self.max_norm)  # else fp32, nothing to learn
            half = choosing and self.scans.use_half(m, n)
            started = time.perf_counter()
            if half:
                scores, rows = half_topk(queries, self.vectors[:n], self.half[:n], self.max_norm, k)  # type: ignore[index]
            else:
                scores, rows = topk(queries, self.vectors[:n], k)
                # scored like the fp16 scan's answer (float64, ties by row): it must not depend on the scan chosen
                for j in range(m):
                    scores[j], rows[j] = ranked(queries[j], self.vectors, rows[j], rows.shape[1])
            self.scans.record(m, n, half, time.perf_counter() - started, learn=choosing)
            return scores, self.ids[rows], n
        scores, sub_rows = topk(queries, self.vectors, k, rows=subset)  # the kept rows only, gathered in cache-sized blocks
        return scores, self.ids[subset[sub_rows]], len(subset)


Head = tuple[uuid.UUID, int, int] | None  # FacesStore.list_head: (account id, change head, face count), None if gone


class HeadReads:
    """Coalesced change-head reads of one list, without giving up read-your-writes.

    A request may share a read only if the read began after the request arrived: a write acknowledged before
    the request was sent committed before that, so the read sees it. So a request that finds no read running
    starts one; one that finds a read running (begun, perhaps, before its writer's commit) waits for the *next*
    read, which starts as soon as the running one ends and serves every request that arrived meanwhile.
    Under load a list costs about one round trip per round-trip time, not one per request; alone, a request
    pays exactly what it did before.
    """

    __slots__ = ("next", "running")

    def __init__(self) -> None:
        self.running: asyncio.Future[Head] | None = None
        self.next: asyncio.Future[Head] | None = None


class ListCache:
    """Cached :class:`ListMatrix` per (list, version), least recently used evicted over a byte budget."""

    def __init__(self, store: FacesStore, max_bytes: int, half_scan: bool = False) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.half_scan = half_scan  # lists also held in fp16 for one-reference scans (ListMatrix)
        self._entries: OrderedDict[tuple[uuid.UUID, int], ListMatrix] = OrderedDict()
        self._loading: dict[tuple[uuid.UUID, int], asyncio.Lock] = {}
        self._heads: dict[uuid.UUID, HeadReads] = {}
        self.head_reads = 0  # PostgreSQL head reads made (coalescing shows as fewer reads than requests)
        self._warned = 0.0  # when an unreachable Faces DB was last logged

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._entries.values())

    def entries(self) -> list[ListMatrix]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, list_id: uuid.UUID, version: int) -> ListMatrix | None:
        """The cached matrix as it is (no Faces DB read): to search while its head is being checked."""
        return self._entries.get((list_id, version))

    async def fresh(self, list_id: uuid.UUID, version: int) -> ListMatrix | None:
        """The list's matrix, brought up to the list's current change head; None if the list does not exist."""
        matrix, _ = await self.current(list_id, version)
        return matrix

    async def current(
        self, list_id: uuid.UUID, version: int, head_timeout_s: float | None = None
    ) -> tuple[ListMatrix | None, bool]:
        """(matrix, stale): like :meth:`fresh`, but with ``head_timeout_s`` an unreachable Faces DB gives the
        cached matrix as it is, with ``stale`` True (or raises 14007 if the list is not cached)."""
        key = (list_id, version)
        try:
            return await self._fresh(list_id, version, head_timeout_s), False
        except UNREACHABLE as exc:
            if head_timeout_s is None:
                raise
            matrix = self._entries.get(key)
            if matrix is None:
                raise FacedexError(Errors.FACES_DB_UNAVAILABLE, f"{type(exc).__name__}: {exc}") from exc
            now = time.monotonic()
            if now - self._warned > 5.0:  # once in a while, not per request
                self._warned = now
                log.warning("list %s: Faces DB unreachable (%s); answering from the cached matrix", list_id, type(exc).__name__)
            return matrix, True

    async def head(self, list_id: uuid.UUID, timeout_s: float | None = None) -> Head:
        """The list's change head from a read that began after this call (:class:`HeadReads`), within ``timeout_s``."""
        reads = self._heads.get(list_id)
        if reads is None:
            reads = self._heads[list_id] = HeadReads()
        if reads.running is None:
            future = reads.running = asyncio.get_running_loop().create_future()
            self._read_head(list_id, timeout_s, reads, future)
        else:
            if reads.next is None:
                reads.next = asyncio.get_running_loop().create_future()
            future = reads.next
        if timeout_s is None:
            return await asyncio.shield(future)
        async with asyncio.timeout(timeout_s):  # this caller's own bound; the shared read goes on for the others
            return await asyncio.shield(future)

    def _read_head(self, list_id: uuid.UUID, timeout_s: float | None, reads: HeadReads, future: asyncio.Future[Head]) -> None:
        self.head_reads += 1
        task = asyncio.ensure_future(self.store.list_head(list_id, timeout=timeout_s))

        def done(t: asyncio.Task[Head]) -> None:
            if t.cancelled():
                future.cancel()
            elif (exc := t.exception()) is not None:
                future.set_exception(exc)
                future.exception()  # retrieved: every waiter may have given up already
            else:
                future.set_result(t.result())
            following, reads.next = reads.next, None
            reads.running = following
            if following is not None:  # requests that arrived while this read ran: one read for them all
                self._read_head(list_id, timeout_s, reads, following)
            elif self._heads.get(list_id) is reads:
                del self._heads[list_id]

        task.add_done_callback(done)

    async def _fresh(self, list_id: uuid.UUID, version: int, head_timeout_s: float | None) -> ListMatrix | None:
        head = await self.head(list_id, head_timeout_s)
        key = (list_id, version)
        if head is None:
            self._entries.pop(key, None)
            return None
        account_id, seq, face_count = head
        lock = self._loading.setdefault(key, asyncio.Lock())
        async with lock:  # one loader / updater per list at a time
            matrix = self._entries.get(key)
            if matrix is None:
                matrix = await self._load(list_id, account_id, version, face_count)
                self._entries[key] = matrix
                self._evict(keep=key)
            elif matrix.head < seq:
                delta = await self.store.delta(list_id, version, matrix.head,
                                               timeout=None if head_timeout_s is None else delta_timeout(head_timeout_s))
                if delta is None:
                    self._entries.pop(key, None)
                    return None
                async with matrix.lock.write():
                    matrix.apply(delta)
        self._entries.move_to_end(key)
        matrix.last_used = time.monotonic()
        return matrix

    async def _load(self, list_id: uuid.UUID, account_id: uuid.UUID, version: int, size_hint: int) -> ListMatrix:
        started = time.perf_counter()
        matrix = ListMatrix(list_id, account_id, version, self.half_scan)
        matrix.reserve(size_hint)  # one allocation, not a regrowth per page
        loop = asyncio.get_running_loop()
        copying: asyncio.Future[None] | None = None
        async for head, ids, vecs, meta in self.store.snapshot_with_meta(list_id, version):
            if copying is not None:
                await copying
            # copy this page in a thread while the next page's COPY runs
            copying = loop.run_in_executor(None, matrix.append, ids, vecs, meta)
            matrix.head = head
        if copying is not None:
            await copying
        log.info(
            "loaded list %s version %d: %d faces in %.2fs", list_id, version, matrix.n, time.perf_counter() - started
        )
        return matrix

    def _evict(self, keep: tuple[uuid.UUID, int]) -> None:
        while self.nbytes > self.max_bytes and len(self._entries) > 1:
            key = next(iter(self._entries))
            if key == keep:
                self._entries.move_to_end(key)
                continue
            evicted = self._entries.pop(key)
            log.info("evicted list %s (%d bytes) over the cache budget", evicted.list_id, evicted.nbytes)
