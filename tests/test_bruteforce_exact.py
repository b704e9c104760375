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
    big = gallery[:1] * 1e6  # components past fp16's 65,504: as fp16 they would be inf
    assert np.abs(big).max() > 65_504
    want = topk(big, gallery, 5)
    got = half_topk(big, gallery, gallery.astype(np.float16), 1.0, 5)
    assert np.array_equal(got[1], want[1]) and np.allclose(got[0], want[0], rtol=1e-6)
    assert half_topk(gallery[:1], gallery, gallery.astype(np.float16), float("nan"), 5)[1][0, 0] == 0  # NaN norm: fp32


def test_the_fp16_copy_follows_every_change_of_a_list_matrix() -> None:
    """Appends past the first capacity (growth copies both), swap-removes and in-place updates keep ``half`` equal to
    the fp32 rows in fp16, and ``max_norm`` at least every live row's norm."""
    import uuid

    from facedex.bruteforce.cache import ListMatrix
    from facedex.faces.store import ListDelta

    rng = np.random.default_rng(8)
    m = ListMatrix(uuid.uuid4(), uuid.uuid4(), 1, half_scan=True)
    ids = rng.integers(0, 256, (3000, 16), dtype=np.uint8)
    for start in range(0, 3000, 700):
        m.append(ids[start : start + 700], _unit(rng.standard_normal((len(ids[start : start + 700]), 512))) * 1.5)
    for fid in ids[::7]:
        m.remove(fid.tobytes())
    upd = ids[1:40:3]
    m.apply(ListDelta(head=5, removed=[], upserted_ids=[f.tobytes() for f in upd],
                      upserted=_unit(rng.standard_normal((len(upd), 512))) * 2.0, meta=None))
    live = m.vectors[: m.n]
    assert m.half is not None and m.half.shape[0] >= m.n > 2000
    assert np.array_equal(m.half[: m.n], live.astype(np.float16))
    assert m.max_norm >= np.linalg.norm(live, axis=1).max() - 1e-6 and m.max_norm == pytest.approx(2.0, rel=1e-5)
    q = live[100:101] / np.linalg.norm(live[100])
    scores, got, _ = m.search(q, 10)
    want_s, want_rows = topk(q, live, 10)
    assert got[0].tolist() == m.ids[want_rows[0]].tolist() and np.allclose(scores[0], want_s[0], atol=1e-6)
    nan_row = np.full((1, 512), np.nan, np.float32)  # never admitted by the API (14xxx), but if it were: fp32 from then on
    m.append(rng.integers(0, 256, (1, 16), dtype=np.uint8), nan_row)
    m.append(rng.integers(0, 256, (1, 16), dtype=np.uint8), _unit(rng.standard_normal((1, 512))))
    assert m.max_norm != m.max_norm


def _fp16_accumulating(half: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """What a kernel summing fp16 products in fp16 (32 lanes, then a tree) would answer."""
    out = np.empty((half.shape[0], queries.shape[0]))
    for j, q in enumerate(queries.astype(np.float16)):
        prod = (half * q).astype(np.float16)
        acc = np.zeros((half.shape[0], 32), np.float16)
        for i in range(0, half.shape[1], 32):
            acc = (acc + prod[:, i : i + 32]).astype(np.float16)
        while acc.shape[1] > 1:
            acc = (acc[:, ::2] + acc[:, 1::2]).astype(np.float16)
        out[:, j] = acc[:, 0]
    return out


def test_an_unsound_fp16_kernel_turns_the_half_scan_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel accumulating in fp16 (as native fp16 arithmetic invites) must not be used."""
    exact.half_scan_sound.cache_clear()
    monkeypatch.setattr(exact, "_half_scores", _fp16_accumulating)
    try:
        assert not exact.half_scan_sound()
    finally:
        exact.half_scan_sound.cache_clear()
    monkeypatch.undo()
    assert exact.half_scan_sound()
