"""The HNSW index behind facedex's interface, and index storage on a local folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facedex.bench.datasets import face_like
from facedex.ids import uuid7_block
from facedex.index import HnswIndex, IndexParams
from facedex.storage.base import CorruptIndex, IndexMeta, newest_per_list
from facedex.storage.local import LocalStorage


@pytest.fixture(scope="module")
def built():
    data = face_like(20_000, n_probes=300, seed=3)
    ids = uuid7_block(len(data.gallery))
    index = HnswIndex(512, IndexParams())
    index.add(ids, data.gallery)
    return data, ids, index


def test_mates_and_top1_match_exact_search(built) -> None:
    data, ids, index = built
    found, scores = index.search(data.probes, 10)
    exact = data.probes @ data.gallery.T
    exact_top1 = ids[np.argmax(exact, axis=1)]
    row_of = {r.tobytes(): i for i, r in enumerate(ids)}
    # the Indexed Matcher re-scores candidates with exact vectors: top-1 is judged after that
    rescored = [found[q, np.argmax([exact[q, row_of[f.tobytes()]] for f in found[q]])] for q in range(len(data.probes))]
    top1_agree = np.mean([np.array_equal(rescored[q], exact_top1[q]) for q in range(len(data.probes))])
    # mate recall: planted same-identity faces that exact search ranks in its top 10 (all of them here)
    hits = total = 0
    for q in range(len(data.probes)):
        mates = np.flatnonzero(data.labels == data.probe_labels[q])
        got = {r.tobytes() for r in found[q]}
        total += len(mates)
        hits += sum(ids[m].tobytes() in got for m in mates)
    assert top1_agree >= 0.99 and hits / total >= 0.99, (top1_agree, hits / total)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first, by the graph's own (i8) scores


def test_remove_add_and_replace(built) -> None:
    data, ids, _ = built
    index = HnswIndex(512, IndexParams(precision="f32"))
    index.add(ids[:100], data.gallery[:100])
    assert index.remove(ids[:10]) == 10 and len(index) == 90
    found, _ = index.search(data.gallery[:10], 5)
    assert not {r.tobytes() for r in found.reshape(-1, 16)} & {i.tobytes() for i in ids[:10]}
    index.add(ids[50:51], data.gallery[0:1])  # replace a face's vector
    found, scores = index.search(data.gallery[0:1], 1)
    assert found[0, 0].tobytes() == ids[50].tobytes() and scores[0, 0] == pytest.approx(1.0, abs=1e-4)
    assert index.remove(ids[:10]) == 0  # already gone
    empty = HnswIndex(512)
    assert empty.search(data.probes[:2], 5)[0].shape == (2, 0, 16)


def test_save_load_and_view(built, tmp_path: Path) -> None:
    data, ids, index = built
    small = HnswIndex(512, IndexParams())
    small.add(ids[:500], data.gallery[:500])
    small.remove(ids[:5])
    small.save(tmp_path)
    for view in (False, True):
        loaded = HnswIndex.load(tmp_path, 512, IndexParams(), view=view)
        assert len(loaded) == 495
        a, _ = small.search(data.gallery[5:25], 3)
        b, _ = loaded.search(data.gallery[5:25], 3)
        assert np.array_equal(a, b)
    with pytest.raises(ValueError):
        HnswIndex.load(tmp_path, 128, IndexParams())


def meta(index_id: str, list_id: str, seq: int, t: str) -> IndexMeta:
    return IndexMeta(index_id, list_id, "acc", 1, 10, seq, {}, create_time=t)


I1, I2 = "0190a1b2-0000-7000-8000-000000000001", "0190a1b2-0000-7000-8000-000000000002"


def test_local_storage_is_atomic_and_verified(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "store")
    work = tmp_path / "work"
    work.mkdir()
    (work / "index.usearch").write_bytes(b"graph")
    (work / "ids.npy").write_bytes(b"ids")
    storage.put(work, meta(I1, "L", 5, "2026-01-01"))
    (tmp_path / "store" / f".tmp-{I2}").mkdir()  # a crashed put: never listed
    assert [m.index_id for m in storage.list()] == [I1]
    got = storage.get_meta(I1)
    assert got is not None and set(got.files) == {"index.usearch", "ids.npy"}
    assert storage.fetch(I1) == tmp_path / "store" / I1
    (tmp_path / "store" / I1 / "ids.npy").write_bytes(b"tampered")
    with pytest.raises(CorruptIndex):
        storage.fetch(I1)
    assert storage.delete(I1) and not storage.delete(I1) and storage.list() == []
    assert storage.get_meta("../etc") is None
    with pytest.raises(ValueError):  # a folder name that is not an index id is never written
        storage.put(work, meta("../outside", "L", 1, "2026-01-01"))
    assert not (tmp_path / "outside").exists() and not (tmp_path / ".tmp-..").exists()
    assert json.loads(meta("x", "L", 1, "t").to_json())["list_id"] == "L"


def test_relevant_index_is_newest_covering_latest_change() -> None:
    metas = [meta("a", "L1", 5, "2026-01-02"), meta("b", "L1", 7, "2026-01-01"), meta("c", "L2", 1, "2026-01-01")]
    best = newest_per_list(metas)
    assert best["L1"].index_id == "b" and best["L2"].index_id == "c"
    assert newest_per_list(metas, version=2) == {}


def test_calibration_picks_an_ef_that_holds_on_other_probes() -> None:
    """The ef chosen from synthetic new photos of sampled faces gives that recall on real planted probes too."""
    from facedex.index.calibrate import calibrate, probes_near

    data = face_like(30_000, n_probes=400, seed=8)
    index = HnswIndex(512, IndexParams(connectivity=8, expansion_add=32, expansion_search=16))
    index.add(uuid7_block(len(data.gallery)), data.gallery)
    rng = np.random.default_rng(1)
    assert np.allclose((probes_near(data.gallery[:50], 0.5, rng) * data.gallery[:50]).sum(axis=1), 0.5, atol=1e-5)

    cal = calibrate(index, data.gallery, candidates=50, start_ef=16, max_ef=4096, target=0.99)
    assert cal.reached and cal.recall >= 0.99 and cal.ef > 16  # a weak graph needs more than the configured ef
    # from max(start, candidates), doubling until the target holds, then two halvings of the last step
    first_held = next(i for i, (_, r) in enumerate(cal.curve) if r >= 0.99)
    doubling = [ef for ef, _ in cal.curve[: first_held + 1]]
    assert doubling == [50 * 2**i for i in range(len(doubling))] and len(doubling) >= 2
    failed, top = doubling[-2:]
    refined = [ef for ef, _ in cal.curve[first_held + 1 :]]
    assert len(refined) == 2 and refined[0] == (failed + top) // 2 and all(failed < ef < top for ef in refined)
    assert cal.ef == min(ef for ef, r in cal.curve if r >= 0.99) and cal.recall == dict(cal.curve)[cal.ef]

    def mate_recall(ef: int) -> float:
        keys = index.search_keys(data.probes, 50, ef=ef)
        hits = total = 0
        for q in range(len(data.probes)):
            mates = np.flatnonzero(data.labels == data.probe_labels[q])
            hits += np.isin(mates, keys[q]).sum()
            total += len(mates)
        return hits / total

    assert mate_recall(cal.ef) >= 0.98
    # a ceiling it cannot reach: the largest allowed ef, and it says so
    capped = calibrate(index, data.gallery, candidates=50, start_ef=16, max_ef=50, target=0.9999)
    assert capped.ef == 50 and not capped.reached and len(capped.curve) == 1
    assert [ef for ef, _ in calibrate(index, data.gallery, 50, 16, 4096, refine=0).curve] == doubling  # refine=0: powers only
