"""Descriptor versions, validation and the similarity every path uses."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from facedex import descriptors
from facedex.bruteforce import exact
from facedex.errors import FacedexError


def code(fn, *args) -> int:
    with pytest.raises(FacedexError) as exc:
        fn(*args)
    return exc.value.error.code


def test_parse_normalises_and_round_trips() -> None:
    raw = (np.arange(1, 513, dtype="<f4")).tobytes()
    vec = descriptors.parse(1, raw)
    assert vec.dtype == np.float32 and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(descriptors.from_bytes(1, descriptors.to_bytes(1, vec)), vec)


def test_parse_rejects_bad_descriptors() -> None:
    good = np.ones(512, "<f4")
    assert code(descriptors.parse, 1, good[:100].tobytes()) == 11002
    bad = good.copy()
    bad[3] = np.nan
    assert code(descriptors.parse, 1, bad.tobytes()) == 11003
    assert code(descriptors.parse, 1, np.zeros(512, "<f4").tobytes()) == 11004
    assert code(descriptors.parse, 77, good.tobytes()) == 11001
    assert code(descriptors.decode_base64, "abc$") == 11005
    huge = np.full(512, 3e38, "<f4")  # finite, but the norm overflows float32
    assert np.linalg.norm(descriptors.parse(1, huge.tobytes())) == pytest.approx(1.0, abs=1e-6)
    assert np.linalg.norm(descriptors.parse_matrix(1, huge[None, :]), axis=1) == pytest.approx(1.0, abs=1e-6)


def test_parse_matrix_names_the_bad_row() -> None:
    m = np.ones((5, 512), np.float32)
    m[3, 0] = np.inf
    with pytest.raises(FacedexError, match="row 3"):
        descriptors.parse_matrix(1, m)
    assert code(descriptors.parse_matrix, 1, np.ones((2, 128), np.float32)) == 11002


def test_versions_registry() -> None:
    assert {v.version: v.dim for v in descriptors.versions()} == {1: 512, 2: 128}
    with pytest.raises(ValueError):
        descriptors.register(descriptors.DescriptorVersion(1, 256, "<f4", "other"))
    assert base64.b64decode(descriptors.encode_base64(b"\x01\x02")) == b"\x01\x02"


def test_similarity_is_clipped_cosine() -> None:
    assert descriptors.similarity(np.array([-0.3, 0.0, 0.42, 1.0000001])).tolist() == pytest.approx([0, 0, 0.42, 1])


@pytest.mark.parametrize("block", [7, 100, 1 << 24])
def test_exact_topk_matches_full_sort(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(exact, "_MAX_SCORE_FLOATS", block)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((503, 32)).astype(np.float32)
    q = rng.standard_normal((5, 32)).astype(np.float32)
    scores, rows = exact.topk(q, x, 12)
    full = q @ x.T
    want = np.argsort(-full, axis=1, kind="stable")[:, :12]
    assert np.array_equal(rows, want)
    assert np.allclose(scores, np.take_along_axis(full, want, 1))


def test_exact_topk_edge_cases() -> None:
    x = np.eye(4, dtype=np.float32)
    s, r = exact.topk(x[:1], x, 10)  # k larger than n
    assert r.shape == (1, 4) and r[0, 0] == 0
    s, r = exact.topk(x[:1], x[:0], 3)  # empty list
    assert r.shape == (1, 0)
    tie = np.ones((5, 2), np.float32)
    _, r = exact.topk(tie[:1], tie, 5)  # ties: lower row first, deterministic
    assert r[0].tolist() == [0, 1, 2, 3, 4]
