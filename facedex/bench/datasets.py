"""Seeded synthetic descriptor sets with exact ground truth.

``face_like``: identities are random unit centres in R^d; each face is
``normalize(centre + noise)`` with noise of norm ``sigma`` drawn per face from
[sigma_lo, sigma_hi]. Two faces of one identity then have cosine about
``1 / sqrt((1 + s1^2)(1 + s2^2))``: 0.5 .. 0.8 with the defaults, while faces of
different identities have cosine 0 +- 1/sqrt(d) (0 +- 0.044 at d = 512), the
regime of ArcFace-class models. Probes are fresh faces of gallery identities
("planted mates"), so the true mates of each probe are known.

``uniform``: i.i.d. unit vectors, the hard case for any ANN index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    gallery: np.ndarray  # (n, d) float32, L2-normalised
    labels: np.ndarray  # (n,) identity of each gallery face (-1 = none)
    probes: np.ndarray  # (q, d) float32, L2-normalised
    probe_labels: np.ndarray  # (q,) identity of each probe

    @property
    def dim(self) -> int:
        return self.gallery.shape[1]


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def _faces(rng: np.random.Generator, centres: np.ndarray, sigma_lo: float, sigma_hi: float) -> np.ndarray:
    n, d = centres.shape
    noise = rng.standard_normal((n, d), dtype=np.float32)
    noise *= (rng.uniform(sigma_lo, sigma_hi, n).astype(np.float32) / np.linalg.norm(noise, axis=1))[:, None]
    return _normalise(centres + noise)


def face_like(
    n: int,
    dim: int = 512,
    faces_per_identity: int = 4,
    n_probes: int = 1000,
    sigma: tuple[float, float] = (0.5, 1.0),
    seed: int = 0,
    chunk: int = 100_000,
) -> Dataset:
    """``n`` gallery faces in ``n // faces_per_identity`` identities, plus planted probes."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // faces_per_identity)
    centres = _normalise(rng.standard_normal((n_ids, dim), dtype=np.float32))
    labels = rng.permutation(np.arange(n) % n_ids)
    gallery = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):  # bounded temporaries at 1M x 512
        gallery[start : start + chunk] = _faces(rng, centres[labels[start : start + chunk]], *sigma)
    probe_labels = rng.choice(n_ids, size=n_probes, replace=n_probes > n_ids)
    probes = _faces(rng, centres[probe_labels], *sigma)
    return Dataset(gallery, labels.astype(np.int64), probes, probe_labels.astype(np.int64))


def uniform(n: int, dim: int = 512, n_probes: int = 1000, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    gallery = _normalise(rng.standard_normal((n, dim), dtype=np.float32))
    probes = _normalise(rng.standard_normal((n_probes, dim), dtype=np.float32))
    return Dataset(gallery, np.full(n, -1, np.int64), probes, np.full(n_probes, -1, np.int64))
