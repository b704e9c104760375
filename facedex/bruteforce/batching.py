"""Cross-request batching: concurrent requests on one list share one matrix product.

One reference against a 1M list streams the whole 2 GB matrix from memory for a
single GEMV; 32 references in one GEMM stream it once for all of them
(docs/benchmarks.md: a batch of 64 runs ~8x the single-reference rate). So
requests that arrive while a search of their list is running wait for it to
finish and then go together in the next one: no timer, no added latency when
the list is idle, and the batch grows exactly as fast as the load does.

Each request has checked the list's change head before it joins (``ListCache.fresh``),
and the batch searches after every member did, so answers stay read-your-writes
fresh. Requests with a face-id filter or other candidate filters search a subset of their own and run alone.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from facedex import descriptors, wire
from facedex.bruteforce.cache import ListMatrix
from facedex.metrics import BATCH_REQUESTS
from facedex.rwlock import finish_in_thread


def run_search(matrix: ListMatrix, reqs: list[wire.MatchRequest]) -> list[wire.MatchResponse]:
    """One exact search for several requests on one matrix (worker thread, under its read lock)."""
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


@dataclass
class _Queue:
    waiting: list[tuple[wire.MatchRequest, asyncio.Future[wire.MatchResponse]]] = field(default_factory=list)
    running: bool = False


class Batcher:
    def __init__(self, executor: ThreadPoolExecutor, max_references: int = 64) -> None:
        self.executor = executor
        self.max_references = max_references
        self._queues: dict[int, _Queue] = {}  # by id() of the ListMatrix

    async def search(self, matrix: ListMatrix, req: wire.MatchRequest) -> wire.MatchResponse:
        if req.face_ids is not None or req.filters is not None:
            return (await self._run(matrix, [req]))[0]
        queue = self._queues.setdefault(id(matrix), _Queue())
        future: asyncio.Future[wire.MatchResponse] = asyncio.get_running_loop().create_future()
        queue.waiting.append((req, future))
        if not queue.running:
            queue.running = True
            asyncio.create_task(self._drain(matrix, queue))
        return await future

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
                    responses = await self._run(matrix, [req for req, _ in batch])
                except Exception as exc:  # every waiter gets the error, none hangs
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), response in zip(batch, responses):
                    if not future.done():
                        future.set_result(response)
        finally:
            queue.running = False
            self._queues.pop(id(matrix), None)

    async def _run(self, matrix: ListMatrix, reqs: list[wire.MatchRequest]) -> list[wire.MatchResponse]:
        async with matrix.lock.read():
            return await finish_in_thread(run_search, matrix, reqs, executor=self.executor)


def _count(req: wire.MatchRequest, dim: int) -> int:
    return len(req.references) // (4 * dim)
