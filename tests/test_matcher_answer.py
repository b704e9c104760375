"""The Indexed Matcher answers a batch of stream requests with one scan per limit, each as if alone."""

from __future__ import annotations

import uuid
from pathlib import Path

import msgspec
import numpy as np
import pytest

from facedex import wire
from facedex.bench.datasets import face_like
from facedex.errors import Errors
from facedex.ids import uuid7_block
from facedex.index import FaceIndex
from facedex.matcher.answer import answer_batch
from facedex.matcher.loaded import LoadedIndex
from facedex.storage.base import IndexMeta

ACCOUNT = uuid.uuid4()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedIndex, np.ndarray, object]:
    data = face_like(4_000, n_probes=40, seed=5)
    ids = uuid7_block(len(data.gallery))
    index = FaceIndex.build("pq_fastscan", {"m": 64}, ids, data.gallery, rescore_n=16)
    folder: Path = tmp_path_factory.mktemp("index")
    index.save(folder)
    meta = IndexMeta("i1", str(uuid.uuid4()), str(ACCOUNT), 1, len(ids), 0, index.describe(), kind="pq_fastscan")
    return LoadedIndex(meta, folder, writable=False), ids, data


def request(refs: np.ndarray, limit: int = 5, threshold: float | None = None, account: uuid.UUID = ACCOUNT,
            version: int = 1, raw: bytes | None = None) -> wire.IndexedRequest:
    body = wire.MatchRequest(account.bytes, uuid.uuid4().bytes, version,
                             raw if raw is not None else np.asarray(refs, "<f4").tobytes(), limit, threshold)
    return wire.IndexedRequest(uuid.uuid4().hex, "replies", 0, body)


def untimed(reply):  # type: ignore[no-untyped-def]
    """A reply without its hop times (they differ from run to run)."""
    if reply.response is None:
        return reply
    return msgspec.structs.replace(reply, response=msgspec.structs.replace(reply.response, timings=None))


def test_a_batch_is_one_search_per_limit_and_each_answer_is_as_if_alone(loaded, monkeypatch) -> None:
    idx, ids, data = loaded
    probes = data.probes
    reqs = [request(probes[i:i + 1]) for i in range(8)]
    reqs += [request(probes[8:11]), request(probes[11:12], limit=2), request(probes[12:13], threshold=0.3),
             request(probes[13:14], account=uuid.uuid4()), request(probes[14:15], version=2),
             request(probes[15:16], raw=b"\x00" * 7)]
    alone = [answer_batch(idx, [r], candidates=50)[0] for r in reqs]

    calls: list[int] = []
    search = idx.search

    def counting(queries: np.ndarray, k: int, candidates: int = 0, split=None):  # type: ignore[no-untyped-def]
        calls.append(queries.shape[0])
        return search(queries, k, candidates, split)

    monkeypatch.setattr(idx, "search", counting)
    replies = answer_batch(idx, reqs, candidates=50)
    assert sorted(calls) == [1, 12]  # limit 5: 8 + 3 + 1 references in one call; limit 2: one call
    assert [r.rid for r in replies] == [r.rid for r in reqs]
    assert [untimed(r) for r in replies] == [untimed(r) for r in alone]
    timed = [r.response.timings for r in replies if r.response is not None]
    assert timed and all(set(t) == {"search", "rescore"} and min(t.values()) >= 0 for t in timed)  # facedex.timing

    for reply, req in zip(replies[:8], reqs[:8]):
        (res,) = reply.response.results
        got = np.frombuffer(res.face_ids, np.uint8).reshape(-1, 16)
        sims = np.frombuffer(res.similarities, np.float32)
        q = req.request.reference_matrix(512)[0]
        rows = [int(np.flatnonzero((ids == f).all(axis=1))[0]) for f in got]
        assert len(rows) == 5 and np.allclose(sims, np.clip(data.gallery[rows] @ q, 0, 1), atol=1e-5)  # exact re-scores
        assert data.labels[rows[0]] == data.probe_labels[int(np.flatnonzero((probes == q).all(axis=1))[0])]
    assert len(replies[8].response.results) == 3
    assert len(replies[9].response.results[0].face_ids) == 2 * 16
    kept = np.frombuffer(replies[10].response.results[0].similarities, np.float32)
    assert len(kept) and (kept >= 0.3).all() and len(kept) < 5
    assert (replies[11].error_code, replies[11].response) == (Errors.LIST_NOT_FOUND.code, None)
    assert replies[12].error_code == Errors.INDEX_VERSION_MISMATCH.code
    assert replies[13].error_code == Errors.MATCH_REQUEST_INVALID.code and "512-d" in replies[13].detail


def test_an_old_format_index_is_refused(loaded, tmp_path: Path) -> None:
    idx, _, _ = loaded
    old = IndexMeta("i0", idx.meta.list_id, str(ACCOUNT), 1, 1, 0, {"expansion_search": 128}, format=1)
    with pytest.raises(ValueError):
        LoadedIndex(old, tmp_path, writable=False)  # the matcher skips it (26308); a rebuild replaces it
