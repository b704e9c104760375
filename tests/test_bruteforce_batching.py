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

    running: dict[str, int] = {"large": 0, "small": 0}
    most = {"large": 0}
    small_beside_large = []
    lock = threading.Lock()
    search = batching.run_search

    def slow_search(m, reqs):  # type: ignore[no-untyped-def]
        kind = "small" if m is small else "large"
        with lock:
            running[kind] += 1
            most["large"] = max(most["large"], running["large"])
            if kind == "small":
                small_beside_large.append(running["large"])
        try:
            time.sleep(0.05)  # long enough for any overlap to show
            return search(m, reqs)
        finally:
            with lock:
                running[kind] -= 1

    monkeypatch.setattr(batching, "run_search", slow_search)
    batcher = Batcher(ThreadPoolExecutor(max_workers=2))
    q = rng.standard_normal(512).astype(np.float32)
    q /= np.linalg.norm(q)

    def ask(m):  # type: ignore[no-untyped-def]
        return batcher.search(m, wire.MatchRequest(m.account_id.bytes, m.list_id.bytes, version, q.tobytes(), limit=5))

    async def small_later() -> wire.MatchResponse:
        await asyncio.sleep(0.02)  # while the first large scan runs
        return await ask(small)

    answers = await asyncio.gather(*(ask(m) for m in large), small_later())
    assert most["large"] == 1  # never two large scans at once
    assert small_beside_large == [1]  # the small list was scanned while a large one ran, not after all of them
    for m, resp in zip([*large, small], answers):
        want = np.sort(m.vectors[: m.n] @ q)[::-1][:5]
        assert np.allclose(np.frombuffer(resp.results[0].similarities, np.float32), np.clip(want, 0, 1), atol=1e-6)
