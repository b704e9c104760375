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
    """A small list is searched on the event loop (a worker-thread hand-off cost more than its search); one above
    INLINE_PRODUCTS (a reference times the list's floats) goes to a worker thread, so a long scan never stalls the
    loop, and so does a batch whose references together pass the bound. The answers are the same either way."""
    rng = np.random.default_rng(2)
    version = version_of(512)

    def matrix(n: int):  # type: ignore[no-untyped-def]
        x = rng.standard_normal((n, 512)).astype(np.float32)
        return cached_matrix(x / np.linalg.norm(x, axis=1, keepdims=True), version, rng)

    small, large = matrix(100), matrix(1000)
    monkeypatch.setattr(batching, "INLINE_PRODUCTS", 500 * 512)  # 100 faces x 1 reference inline; 1,000 faces not
    threads: dict[str, list[int]] = {"small": [], "large": []}
    search = batching.run_search

    def watched_search(m, reqs):  # type: ignore[no-untyped-def]
        threads["small" if m is small else "large"].append(threading.get_ident())
        return search(m, reqs)

    monkeypatch.setattr(batching, "run_search", watched_search)
    q = rng.standard_normal((8, 512)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    loop_thread = threading.get_ident()
    with ThreadPoolExecutor(max_workers=2) as pool:
        batcher = Batcher(pool)

        def ask(m, refs: np.ndarray):  # type: ignore[no-untyped-def]
            return batcher.search(m, wire.MatchRequest(m.account_id.bytes, m.list_id.bytes, version, refs.tobytes(), limit=5))

        one_small = await ask(small, q[0])  # alone (requests that arrive together on one list are searched together)
        one_large, eight_small = await asyncio.gather(ask(large, q[0]), ask(small, q))
    assert threads["small"][0] == loop_thread  # one reference over 100 faces: inline
    assert threads["large"] == [threads["large"][0]] and threads["large"][0] != loop_thread
    assert threads["small"][1] != loop_thread  # 8 references x 100 faces pass the bound: a worker thread
    for m, resp, refs in ((small, one_small, q[:1]), (large, one_large, q[:1]), (small, eight_small, q)):
        for j, got in enumerate(resp.results):
            want = np.sort(m.vectors[: m.n] @ refs[j])[::-1][:5]
            assert np.allclose(np.frombuffer(got.similarities, np.float32), np.clip(want, 0, 1), atol=1e-6)
