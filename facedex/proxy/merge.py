"""Merging the answers of one candidate set's lists into one exact top-k per reference.

Each list's answer is its own exact (or re-scored) top-``limit`` with the set's
threshold applied, so the top-``limit`` of their union is the set's top-``limit``:
a face ranked k-th over the union has fewer than k better faces in its own list.
A face in several lists counts once. Order: similarity descending, then face id
bytes ascending, so equal similarities from different lists merge the same way
every time.
"""

from __future__ import annotations

import numpy as np

from facedex import wire


def merge(answers: list[wire.MatchResponse], limit: int) -> list[wire.ReferenceMatches]:
    """One ``ReferenceMatches`` per reference: the best ``limit`` of every answer's results for it."""
    if len(answers) == 1:
        return answers[0].results
    return [merge_one(list(per_ref), limit) for per_ref in zip(*(a.results for a in answers), strict=True)]


def merge_one(parts: list[wire.ReferenceMatches], limit: int) -> wire.ReferenceMatches:
    ids = np.frombuffer(b"".join(p.face_ids for p in parts), np.uint8).reshape(-1, 16)
    sims = np.frombuffer(b"".join(p.similarities for p in parts), np.float32)
    if len(sims) == 0:
        return wire.ReferenceMatches(face_ids=b"", similarities=b"")
    hi = ids[:, :8].copy().view(">u8").ravel()
    lo = ids[:, 8:].copy().view(">u8").ravel()
    order = np.lexsort((lo, hi, -sims))  # best first; ties by face id
    s_hi, s_lo = hi[order], lo[order]
    # a face found in several lists: keep its first (best) place only
    by_id = np.lexsort((np.arange(len(order)), s_lo, s_hi))
    same = (s_hi[by_id][1:] == s_hi[by_id][:-1]) & (s_lo[by_id][1:] == s_lo[by_id][:-1])
    dup = np.zeros(len(order), bool)
    dup[by_id[1:][same]] = True
    keep = order[~dup][:limit]
    return wire.ReferenceMatches(face_ids=ids[keep].tobytes(), similarities=sims[keep].tobytes())
