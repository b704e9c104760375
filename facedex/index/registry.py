"""Index kinds by name, and the configurations a build tries (cheapest first within a kind).

The candidates follow issue 11's measurements: sign bits of the descriptor
(one bit per dimension), sign bits of a random projection to 512 bits for
smaller descriptors (128 bits of SFace are too coarse), PQ fast-scan at 32 B
and 64 B per face, RaBitQ, and the HNSW graph for lists small enough to build
one quickly. A kind named in ``index.kinds`` but impossible for a dimension
(PQ's sub-quantizers must divide it) is skipped.
"""

from __future__ import annotations

from typing import Any

from facedex.index.base import Scan
from facedex.index.binary import SignBits
from facedex.index.hnsw import HnswScan
from facedex.index.quantized import PQFastScan, RaBitQ

KINDS: dict[str, type[Scan]] = {cls.kind: cls for cls in (SignBits, PQFastScan, RaBitQ, HnswScan)}  # type: ignore[misc]

PROJECTED_BITS = 512


def kind(name: str) -> type[Scan]:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown index kind {name!r} (known: {', '.join(KINDS)})") from None


def candidates(dim: int, n: int, kinds: list[str], hnsw: dict[str, Any], hnsw_max_faces: int) -> list[tuple[str, dict[str, Any]]]:
    """(kind, build params) to try on a list of ``n`` faces of ``dim`` dimensions."""
    out: list[tuple[str, dict[str, Any]]] = []
    for name in kinds:
        kind(name)
        if name == "sign":
            out.append(("sign", {"bits": dim}))
            if dim < PROJECTED_BITS:
                out.append(("sign", {"bits": PROJECTED_BITS, "seed": 0}))
        elif name == "pq_fastscan":
            out += [("pq_fastscan", {"m": m}) for m in (64, 128) if dim % m == 0]  # 32 B and 64 B per face
        elif name == "rabitq":
            out.append(("rabitq", {}))
        elif name == "hnsw" and n <= hnsw_max_faces:
            out.append(("hnsw", dict(hnsw)))
    return out
