"""The brute-force Matcher's fp16 scan (facedex.bruteforce.exact.half_topk) answers exactly what the fp32 scan does."""

from __future__ import annotations

import numpy as np
import pytest

from facedex.bruteforce import exact
from facedex.bruteforce.exact import half_scan_sound, half_topk, topk


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _near_mates(rng: np.random.Generator, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    """A gallery where the best rows of each query are within 1e-4 of each other: closer than fp16 can tell apart,
    so an fp16 ranking alone gets their order wrong and only the fp32 re-score gets it right."""
    gallery = _unit(rng.standard_normal((n, d)))
    queries = _unit(rng.standard_normal((2, d)))
    for j, q in enumerate(queries):
        for i in range(40):  # 40 mates at cosine 0.8 - i * 2.5e-6 from the query, apart in a random direction
            noise = _unit(rng.standard_normal(d) - q * (q @ rng.standard_normal(d)))
            noise = _unit(noise - q * (noise @ q))
            cos = 0.8 - i * 2.5e-6
            gallery[100 * j + i] = _unit(cos * q + np.sqrt(1 - cos**2) * noise)
    return gallery, queries


@pytest.mark.parametrize(("n", "d"), [(5_000, 512), (70_000, 128)])  # the second is split over the cores
def test_half_scan_ranks_exactly_where_fp16_cannot(n: int, d: int) -> None:
    assert half_scan_sound()
    gallery, queries = _near_mates(np.random.default_rng(n), n, d)
    half = gallery.astype(np.float16)
    fp16_only = np.argsort(-(half.astype(np.float32) @ queries.T), axis=0, kind="stable")[:30].T
    want_s, want_i = topk(queries, gallery, 30)
    assert any(not np.array_equal(fp16_only[j], want_i[j]) for j in range(2)), "the data must defeat an fp16 ranking"
    for m in (1, 2):
        got_s, got_i = half_topk(queries[:m], gallery, half, 1.0, 30)
        assert np.array_equal(got_i, want_i[:m])
        assert np.allclose(got_s, want_s[:m], rtol=0, atol=1e-6)


def test_half_scan_breaks_ties_by_row_and_handles_small_lists() -> None:
    rng = np.random.default_rng(3)
    gallery = _unit(rng.standard_normal((50, 128)))
    gallery[10:20] = gallery[5]  # ten copies of row 5: tied scores
    q = gallery[5:6].copy()
    s, rows = half_topk(q, gallery, gallery.astype(np.float16), 1.0, 8)
    assert rows[0].tolist() == [5, 10, 11, 12, 13, 14, 15, 16] and np.allclose(s, s[0, 0])
    s, rows = half_topk(q, gallery[:3], gallery[:3].astype(np.float16), 1.0, 10)  # k over n: every row, best first
    assert rows.shape == (1, 3) and set(rows[0].tolist()) == {0, 1, 2}


def test_values_fp16_cannot_hold_scan_fp32() -> None:
    rng = np.random.default_rng(4)
    gallery = _unit(rng.standard_normal((300, 128)))
    big = gallery[:1] * 1e5  # beyond fp16's range: its fp16 products would be inf
    want = topk(big, gallery, 5)
    got = half_topk(big, gallery, gallery.astype(np.float16), 1.0, 5)
    assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0], rtol=1e-6)


def test_an_unsound_fp16_kernel_turns_the_half_scan_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel outside the proven error bound (one accumulating in fp16, say) must not be used."""
    exact.half_scan_sound.cache_clear()
    real = exact._half_scores
    monkeypatch.setattr(exact, "_half_scores", lambda half, q: real(half, q) + 0.002)  # ~ an fp16 accumulator's error
    try:
        assert not exact.half_scan_sound()
    finally:
        exact.half_scan_sound.cache_clear()
    monkeypatch.setattr(exact, "_half_scores", real)
    assert exact.half_scan_sound()
