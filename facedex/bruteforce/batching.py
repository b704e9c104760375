"""Cross-request batching: concurrent requests on one list share one matrix product.

One reference against a 1M list streams the whole 2 GB matrix from memory for a
single GEMV; 32 references in one GEMM stream it once for all of them
(docs/benchmarks.md: a batch of 64 runs ~8x the single-reference rate). So
requests that arrive while a search of their list is running wait for it to
finish and then go together in the next one: no timer, no added latency when
the list is idle, and the batch grows exactly as fast as the load does.

A request may join before its list's change head is read: each answer comes with the
head of the matrix it searched (:meth:`Batcher.search_at`), and the caller uses it
only if no newer change was found by a head read begun after the request arrived
(:func:`facedex.bruteforce.app.match`), so answers stay read-your-writes fresh.
Requests with a face-id filter or other candidate filters search a subset of their own and run alone.

Large scans run one at a time in the process (``HEAVY_FLOATS`` read): numpy's BLAS already spreads one
scan over every core, and two multi-threaded OpenBLAS calls side by side are far slower than one after the other
(three 1M x 512 GEMVs on 2 cores: 244 ms in turn, 368 ms side by side), which is what a candidate set over
several lists sends. Scans of small lists are not held back behind them.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import msgspec
import numpy as np

from facedex import descriptors, timing, wire
from facedex.bruteforce.cache import ListMatrix
from facedex.metrics import BATCH_REQUESTS
from facedex.rwlock import finish_in_thread

HEAVY_FLOATS = 1 << 24  # searches reading at least this many floats (64 MB: ~32k faces at 512-d) run one at a time
# searches of fewer products (rows x dim x references: one reference over 16k x 512 faces, well under a millisecond)
# run on the event loop: handing one to a worker thread and back cost 0.1-0.2 ms of wake-ups (10k x 512, in process:
# 0.13 ms beside a 0.3-0.6 ms search). Only unfiltered batches (a filter's own work is not counted here) and only
# while no search of this process runs in a worker thread (an inline BLAS call could wait for one there, with the
# loop stalled).
INLINE_PRODUCTS = 1 << 23

# responses, perf_counter when the search began and ended, and the matrix's change head it searched
Timed = tuple[list[wire.MatchResponse], float, float, int]
Timed1 = tuple[wire.MatchResponse, float, float, int]  # one waiter's share of a Timed


def run_search(matrix: ListMatrix, reqs: list[wire.MatchRequest]) -> list[wire.MatchResponse]:
    """One exact search for several requests on one matrix, under its read lock (on the event loop or in a worker
    thread: :meth:`Batcher._run`)."""
    queries = [r.reference_matrix(matrix.dim) for r in reqs]
    face_ids, filters = (reqs[0].face_ids, reqs[0].filters) if len(reqs) == 1 else (None, None)
    scores, ids, size = matrix.search(np.vstack(queries), max(r.limit for r in reqs), face_ids, filters)
    out = []
    row = 0
    for req, q in zip(reqs, queries):
        results = []
        for i in range(row, row + q.shape[0]):
            sims = descriptors.similarity(scores[i, : req.limit]).astype(np.float32)
            keep = sims >= req.threshold if req.threshold is not None else slice(None)
            results.append(wire.ReferenceMatches(face_ids=ids[i, : req.limit][keep].tobytes(), similarities=sims[keep].tobytes()))
        row += q.shape[0]
        out.append(wire.MatchResponse(results=results, route="bruteforce", list_size=size))
    return out


def _timed_search(matrix: ListMatrix, reqs: list[wire.MatchRequest]) -> Timed:
    started = time.perf_counter()
    head = matrix.head  # under the read lock: no change is applied while this search runs
    out = run_search(matrix, reqs)
    return out, started, time.perf_counter(), head


def _with_timings(resp: wire.MatchResponse, enqueued: float, started: float, ended: float) -> wire.MatchResponse:
    """The answer with its ``queue`` (waiting for the list's running search and a worker thread) and ``search``."""
    hops = {timing.QUEUE: timing.ms(max(started - enqueued, 0.0)), timing.SEARCH: timing.ms(ended - started)}
    return msgspec.structs.replace(resp, timings={**(resp.timings or {}), **hops})


@dataclass
class _Queue:
    waiting: list[tuple[wire.MatchRequest, asyncio.Future[Timed1]]] = field(default_factory=list)
    running: bool = False


class Batcher:
    def __init__(self, executor: ThreadPoolExecutor, max_references: int = 64) -> None:
        self.executor = executor
        self.max_references = max_references
        self._queues: dict[int, _Queue] = {}  # by id() of the ListMatrix
        self._heavy = asyncio.Semaphore(1)  # one large scan at a time (module docstring)
        self._threaded = 0  # searches running in worker threads now

    async def search(self, matrix: ListMatrix, req: wire.MatchRequest) -> wire.MatchResponse:
        return (await self.search_at(matrix, req))[0]

    async def search_at(self, matrix: ListMatrix, req: wire.MatchRequest) -> tuple[wire.MatchResponse, int]:
        """The answer, and the matrix's change head it reflects (the search ran with exactly those changes applied)."""
        enqueued = time.perf_counter()
        if req.face_ids is not None or req.filters is not None:
            out, started, ended, head = await self._run(matrix, [req])
            return _with_timings(out[0], enqueued, started, ended), head
        queue = self._queues.setdefault(id(matrix), _Queue())
        future: asyncio.Future[Timed1] = asyncio.get_running_loop().create_future()
        queue.waiting.append((req, future))
        if not queue.running:
            queue.running = True
            asyncio.create_task(self._drain(matrix, queue))
        resp, started, ended, head = await future
        return _with_timings(resp, enqueued, started, ended), head

    async def _drain(self, matrix: ListMatrix, queue: _Queue) -> None:
        try:
            while queue.waiting:
                batch, refs = [], 0
                while queue.waiting and (not batch or refs + _count(queue.waiting[0][0], matrix.dim) <= self.max_references):
                    item = queue.waiting.pop(0)
                    batch.append(item)
                    refs += _count(item[0], matrix.dim)
                BATCH_REQUESTS.observe(len(batch))
                try:
                    responses, started, ended, head = await self._run(matrix, [req for req, _ in batch], may_inline=True)
                except Exception as exc:  # every waiter gets the error, none hangs
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), response in zip(batch, responses):
                    if not future.done():
                        future.set_result((response, started, ended, head))
        finally:
            queue.running = False
            self._queues.pop(id(matrix), None)

    async def _run(self, matrix: ListMatrix, reqs: list[wire.MatchRequest], may_inline: bool = False) -> Timed:
        """``may_inline``: the requests carry no candidate filter (batches of plain requests)."""
        floats = _scanned_floats(matrix, reqs)
        if may_inline and not self._threaded and floats * sum(_count(r, matrix.dim) for r in reqs) < INLINE_PRODUCTS:
            # One loop turn first. The change-head read begun for these requests is a chain of tasks (ListCache.head
            # -> FacesStore.list_head -> bounded -> asyncpg), each started a turn after the one before; after this turn
            # its query goes out right after the search (bench e2e, 10k: `fresh` 0.09-0.15 ms; 0.26 without the
            # turn). Three turns send it before the search, but the turns and the read's own work then lie in front
            # of the search: p50 worse in five interleaved pairs (2.60-2.97 against 2.37-2.74 ms).
            await asyncio.sleep(0)
            async with matrix.lock.read():
                return _timed_search(matrix, reqs)
        self._threaded += 1
        try:
            if floats < HEAVY_FLOATS:
                async with matrix.lock.read():
                    return await finish_in_thread(_timed_search, matrix, reqs, executor=self.executor)
            # the turn first, then the list's read lock: a change to this list is not held up while other lists scan
            async with self._heavy, matrix.lock.read():
                return await finish_in_thread(_timed_search, matrix, reqs, executor=self.executor)
        finally:
            self._threaded -= 1


def _scanned_floats(matrix: ListMatrix, reqs: list[wire.MatchRequest]) -> int:
    """About how many floats the search reads: a face-id filter reads its faces' rows only (a scheduling hint, read
    outside the lock)."""
    face_ids = reqs[0].face_ids if len(reqs) == 1 else None
    rows = matrix.n if face_ids is None else min(len(face_ids), matrix.n)
    return rows * matrix.dim


def _count(req: wire.MatchRequest, dim: int) -> int:
    return len(req.references) // (4 * dim)
