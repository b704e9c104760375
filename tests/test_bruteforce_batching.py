"""The brute-force Matcher's scheduler: large scans one at a time, small ones beside them, answers exact."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from facedex import wire
from facedex.bench.filters import cached_matrix, version_of
from facedex.bruteforce import batching
from facedex.bruteforce.batching import Batcher


async def test_large_scans_run_one_at_a_time_and_small_ones_beside_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two multi-threaded BLAS scans side by side are slower than in turn (a candidate set over several lists sends
    them together), so large matrices are scanned one at a time; a small list is not held back behind them."""
    rng = np.random.default_rng(0)
    version = version_of(512)

    def matrix(n: int):  # type: ignore[no-untyped-def]
        x = rng.standard_normal((n, 512)).astype(np.float32)
        return cached_matrix(x / np.linalg.norm(x, axis=1, keepdims=True), version, rng)

    large = [matrix(3000), matrix(3000), matrix(3000)]
    small = matrix(200)
    monkeypatch.setattr(batching, "HEAVY_FLOATS", 1000 * 512)  # 3,000 faces are "large" here, 200 are not
    monkeypatch.setattr(batching, "INLINE_PRODUCTS", 0)  # every scan in a worker thread (the scheduling tested here)
    running = {"large": 0}
    most = {"large": 0}
    small_beside_large: list[int] = []
    large_in, small_seen = threading.Event(), threading.Event()
    lock = threading.Lock()
    search = batching.run_search

    def watched_search(m, reqs):  # type: ignore[no-untyped-def]
        if m is small:
            with lock:
                small_beside_large.append(running["large"])
            small_seen.set()
            return search(m, reqs)
        with lock:
            running["large"] += 1
            most["large"] = max(most["large"], running["large"])
            first = not large_in.is_set()
        try:
            if first:  # the first large scan holds its turn until the small list has been scanned (or 10 s pass)
                large_in.set()
                small_seen.wait(10)
            else:
                time.sleep(0.02)  # long enough for two large scans side by side to show
            return search(m, reqs)
        finally:
            with lock:
                running["large"] -= 1

    monkeypatch.setattr(batching, "run_search", watched_search)
    q = rng.standard_normal(512).astype(np.float32)
    q /= np.linalg.norm(q)

    with ThreadPoolExecutor(max_workers=4) as pool:  # threads to spare: only the scheduler can keep large scans apart
        batcher = Batcher(pool)

        def ask(m):  # type: ignore[no-untyped-def]
            return batcher.search(m, wire.MatchRequest(m.account_id.bytes, m.list_id.bytes, version, q.tobytes(), limit=5))

        async def small_later() -> wire.MatchResponse:
            await asyncio.to_thread(large_in.wait, 10)  # while the first large scan runs
            return await ask(small)

        answers = await asyncio.gather(*(ask(m) for m in large), small_later())
    assert most["large"] == 1  # never two large scans at once
    assert small_beside_large == [1]  # the small list was scanned while a large one ran, not after all of them
    for m, resp in zip([*large, small], answers):
        want = np.sort(m.vectors[: m.n] @ q)[::-1][:5]
        assert np.allclose(np.frombuffer(resp.results[0].similarities, np.float32), np.clip(want, 0, 1), atol=1e-6)


def test_a_face_id_filter_is_sized_by_its_faces_not_by_its_list() -> None:
    """A request for 10 faces of a 1M list reads 10 rows: it is not made to wait behind other lists' full scans."""
    rng = np.random.default_rng(1)
    version = version_of(512)
    m = cached_matrix(np.zeros((40_000, 512), np.float32), version, rng)
    whole = wire.MatchRequest(m.account_id.bytes, m.list_id.bytes, version, b"\0" * 2048, limit=5)
    few = wire.MatchRequest(m.account_id.bytes, m.list_id.bytes, version, b"\0" * 2048, limit=5,
                            face_ids=[m.ids[i].tobytes() for i in range(10)])
    assert batching._scanned_floats(m, [whole]) == 40_000 * 512 >= batching.HEAVY_FLOATS
    assert batching._scanned_floats(m, [few]) == 10 * 512 < batching.HEAVY_FLOATS


async def test_small_searches_run_on_the_event_loop_and_larger_ones_never_block_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small list is searched on the event loop (a worker-thread hand-off cost more than its search). A list above
    INLINE_PRODUCTS (a reference times the list's floats), a batch whose references together pass it, a filtered
    request, and any search while another runs in a worker thread go to a worker thread: a long scan never stalls the
    loop, nor does an inline BLAS call wait there for a busy one. The answers are the same either way."""
    rng = np.random.default_rng(2)
    version = version_of(512)

    def matrix(n: int):  # type: ignore[no-untyped-def]
        x = rng.standard_normal((n, 512)).astype(np.float32)
        return cached_matrix(x / np.linalg.norm(x, axis=1, keepdims=True), version, rng)

    small, large = matrix(100), matrix(1000)
    monkeypatch.setattr(batching, "INLINE_PRODUCTS", 500 * 512)  # 100 faces x 1 reference inline; 1,000 faces not
    threads: list[tuple[str, int]] = []
    large_running, release = threading.Event(), threading.Event()
    search = batching.run_search

    def watched_search(m, reqs):  # type: ignore[no-untyped-def]
        threads.append(("small" if m is small else "large", threading.get_ident()))
        if m is large and not release.is_set():  # the large scan holds its worker thread until released
            large_running.set()
            release.wait(10)
        return search(m, reqs)

    monkeypatch.setattr(batching, "run_search", watched_search)
    q = rng.standard_normal((8, 512)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    loop_thread = threading.get_ident()
    with ThreadPoolExecutor(max_workers=2) as pool:
        batcher = Batcher(pool)

        def ask(m, refs: np.ndarray, **kw):  # type: ignore[no-untyped-def]
            req = wire.MatchRequest(m.account_id.bytes, m.list_id.bytes, version, refs.tobytes(), limit=5, **kw)
            return batcher.search(m, req)

        first50 = [small.ids[i].tobytes() for i in range(50)]
        answers = [(small.vectors[:100], q[:1], await ask(small, q[0]))]  # alone: inline
        answers.append((small.vectors[:100], q, await ask(small, q)))  # 8 references x 100 faces pass the bound
        answers.append((small.vectors[:50], q[:1], await ask(small, q[0], face_ids=first50)))  # filtered
        busy = asyncio.ensure_future(ask(large, q[0]))  # one reference over 1,000 faces: a worker thread
        await asyncio.to_thread(large_running.wait, 10)
        during = asyncio.ensure_future(ask(small, q[0]))  # small, but the large scan holds a worker thread
        await asyncio.sleep(0.2)
        release.set()
        answers += [(large.vectors[:1000], q[:1], await busy), (small.vectors[:100], q[:1], await during)]
    assert [who for who, thread in threads if thread == loop_thread] == ["small"], threads  # only the first inline
    assert [who for who, _ in threads] == ["small", "small", "small", "large", "small"]
    for rows, refs, resp in answers:
        for ref, got in zip(refs, resp.results, strict=True):
            want = np.sort(rows @ ref)[::-1][:5]
            assert np.allclose(np.frombuffer(got.similarities, np.float32), np.clip(want, 0, 1), atol=1e-6)
