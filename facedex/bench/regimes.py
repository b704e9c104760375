"""The data regimes every bench command can run on (``--data``), by name, with a sentence saying what each is.

One registry so ``bench index`` and ``bench e2e`` accept the same names and describe them alike.
"""

from __future__ import annotations

from collections.abc import Callable

from facedex.bench.datasets import Dataset, face_like, uniform
from facedex.bench.faces_model import manifold, subspace

DATA: dict[str, Callable[..., Dataset]] = {
    "face-like": face_like,
    "manifold": manifold,
    "subspace": subspace,
    "uniform": uniform,
}

DESCRIPTION = {
    "face-like": "isotropic identity clusters (random unit centres, 4 faces per identity, isotropic noise)",
    "manifold": "structured identities on a 12-d curved manifold (random cosine-feature map of a latent space, "
                "4 faces per identity, low-rank photo variation plus small ambient noise; `facedex/bench/faces_model.py`)",
    "subspace": "structured identities in 4 correlated groups, photo variation in a shared rank-12 nuisance subspace "
                "plus isotropic noise (`facedex/bench/faces_model.py`)",
    "uniform": "i.i.d. uniform unit vectors (no identities, so no mates: recall@10 is the measure)",
}


def make(data: str, n: int, dim: int, n_probes: int, seed: int) -> Dataset:
    if data not in DATA:
        raise ValueError(f"unknown data {data!r}; known: {', '.join(DATA)}")
    return DATA[data](n, dim=dim, n_probes=n_probes, seed=seed)
