"""Structured "face-like" descriptor generators written from the literature, and the measures that check them.

What real ArcFace-class embeddings look like (the targets):

- impostor (different-person) cosine about 0.03 ± 0.07, with a heavier right tail than a Gaussian;
- genuine (same-person) cosine about 0.4-0.8;
- low intrinsic dimension, about 10-20, although linear PCA needs hundreds of
  components (Gong, Boddeti, Jain, "On the intrinsic dimensionality of image
  representations", CVPR 2019);
- part of the within-identity variation (pose, illumination, expression) is low-rank.

The isotropic identity clusters of :func:`facedex.bench.datasets.face_like`
meet the cosines but have impostors at 0 ± 1/sqrt(d) and full intrinsic
dimension. A linear Gaussian model cannot meet all four at once: low intrinsic
dimension from a linear map of a k-dimensional latent puts impostor cosines at
0 ± 1/sqrt(k) (± 0.25 at k = 16). So there are two generators here:

- :func:`manifold`: identities and their photos are points of a 12-d latent
  space, mapped to R^d by a random one-hidden-layer network with cosine units
  (random Fourier features of a Gaussian kernel). The map is curved, so the
  manifold is 12-dimensional while distant points are near-orthogonal: two
  identities' cosine is about exp(-|z1 - z2|^2 / 2l^2), which with the default
  length scale gives about 0.04 ± 0.07 with a right tail (close identities are
  lookalikes); a photo is its identity's latent point moved a little (low-rank,
  nonlinear variation) plus a small ambient noise.
- :func:`subspace`: a linear mixture / correlated-subspace model: identities
  belong to a few groups (a shared group direction lifts the impostor mean and
  widens its spread), and a photo adds a low-rank nuisance from a subspace
  shared by everyone (pose, light) plus isotropic noise. It meets the cosine
  statistics but not the intrinsic dimension (the other regime of the two).

:func:`measure` returns the statistics a run reports next to its numbers.
"""

from __future__ import annotations

import numpy as np

from facedex.bench.datasets import Dataset, _normalise


def _labels(rng: np.random.Generator, n: int, n_ids: int, n_probes: int) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % n_ids)
    probe_labels = rng.choice(n_ids, size=n_probes, replace=n_probes > n_ids)
    return labels.astype(np.int64), probe_labels.astype(np.int64)


def manifold(
    n: int,
    dim: int = 512,
    faces_per_identity: int = 4,
    n_probes: int = 1000,
    latent: int = 12,
    length: float = 1.75,
    move: tuple[float, float] = (0.22, 0.42),
    ambient: float = 0.1,
    seed: int = 0,
    chunk: int = 100_000,
) -> Dataset:
    """Identities on a ``latent``-dimensional curved manifold in R^dim (see the module docstring).

    ``length``: the kernel's length scale in latent units (smaller: impostors nearer 0 and narrower);
    ``move``: range of a photo's latent displacement from its identity, per latent coordinate (sets the
    genuine cosines); ``ambient``: norm of the isotropic noise added in R^dim before normalising.
    """
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // faces_per_identity)
    w = (rng.standard_normal((latent, dim)) / length).astype(np.float32)
    b = rng.uniform(0, 2 * np.pi, dim).astype(np.float32)
    centres = rng.standard_normal((n_ids, latent), dtype=np.float32)
    labels, probe_labels = _labels(rng, n, n_ids, n_probes)

    def photos(ids: np.ndarray) -> np.ndarray:
        z = centres[ids] + rng.standard_normal((len(ids), latent), dtype=np.float32) * rng.uniform(
            *move, len(ids)).astype(np.float32)[:, None]
        x = np.cos(z @ w + b) * np.float32(np.sqrt(2 / dim))
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        noise *= np.float32(ambient) / np.linalg.norm(noise, axis=1, keepdims=True)
        return _normalise(_normalise(x) + noise)

    gallery = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):  # bounded temporaries at 1M+
        gallery[start : start + chunk] = photos(labels[start : start + chunk])
    return Dataset(gallery, labels, photos(probe_labels), probe_labels)


def subspace(
    n: int,
    dim: int = 512,
    faces_per_identity: int = 4,
    n_probes: int = 1000,
    groups: int = 4,
    group_weight: float = 0.35,
    nuisance_rank: int = 12,
    nuisance: tuple[float, float] = (0.35, 0.7),
    isotropic: tuple[float, float] = (0.35, 0.6),
    seed: int = 0,
    chunk: int = 100_000,
) -> Dataset:
    """Identities in ``groups`` correlated groups; photos vary in a shared rank-``nuisance_rank`` subspace.

    A centre is ``normalise(group_weight * g + v)`` with ``g`` its group's unit direction and ``v`` a random
    unit vector, so impostors of one group share ``~group_weight^2``: impostor mean ``~group_weight^2 /
    groups`` and a wider spread than isotropic identities. A photo adds ``B e`` (``B``: one ``dim x
    nuisance_rank`` orthonormal basis for everyone, ``|B e|`` drawn from ``nuisance``) and isotropic noise of
    norm drawn from ``isotropic``.
    """
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // faces_per_identity)
    group_dirs = _normalise(rng.standard_normal((groups, dim), dtype=np.float32))
    group_of = rng.integers(0, groups, n_ids)
    centres = np.empty((n_ids, dim), np.float32)
    for start in range(0, n_ids, chunk):
        v = _normalise(rng.standard_normal((min(chunk, n_ids - start), dim), dtype=np.float32))
        centres[start : start + chunk] = _normalise(np.float32(group_weight) * group_dirs[group_of[start : start + chunk]] + v)
    basis = np.linalg.qr(rng.standard_normal((dim, nuisance_rank)))[0].astype(np.float32)  # (dim, r), orthonormal
    labels, probe_labels = _labels(rng, n, n_ids, n_probes)

    def photos(ids: np.ndarray) -> np.ndarray:
        e = rng.standard_normal((len(ids), nuisance_rank), dtype=np.float32)
        low = e @ basis.T
        low *= (rng.uniform(*nuisance, len(ids)).astype(np.float32) / np.linalg.norm(low, axis=1))[:, None]
        iso = rng.standard_normal((len(ids), dim), dtype=np.float32)
        iso *= (rng.uniform(*isotropic, len(ids)).astype(np.float32) / np.linalg.norm(iso, axis=1))[:, None]
        return _normalise(centres[ids] + low + iso)

    gallery = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        gallery[start : start + chunk] = photos(labels[start : start + chunk])
    return Dataset(gallery, labels, photos(probe_labels), probe_labels)


def twonn_dimension(x: np.ndarray, discard: float = 0.1) -> float:
    """Intrinsic dimension by TwoNN (Facco et al., Sci. Rep. 2017): from the ratio of each point's 2nd to 1st
    nearest-neighbour distance, whose law depends on the local dimension only; maximum likelihood over the
    points, the ``discard`` largest ratios dropped (they come from the sparse tail, as the paper advises)."""
    gram = x @ x.T
    sq = np.maximum(2.0 - 2.0 * gram, 0.0)  # squared distances of unit vectors
    np.fill_diagonal(sq, np.inf)
    two = np.sqrt(np.partition(sq, 1, axis=1)[:, :2])
    r1, r2 = two.min(axis=1), two.max(axis=1)
    keep = r1 > 1e-6  # exact duplicates say nothing about dimension
    mu = np.sort(r2[keep] / r1[keep])
    mu = mu[: max(1, int(len(mu) * (1 - discard)))]
    return float(len(mu) / np.sum(np.log(mu)))


def pca_dimension(x: np.ndarray, share: float = 0.9) -> int:
    """Principal components needed for ``share`` of the variance: the linear view, which overstates a curved
    manifold's dimension (hence TwoNN beside it)."""
    centred = x - x.mean(axis=0)
    s = np.linalg.svd(centred, compute_uv=False) ** 2
    return int(np.searchsorted(np.cumsum(s) / s.sum(), share) + 1)


def _summary(values: np.ndarray) -> dict[str, float]:
    q = np.quantile(values, [0.01, 0.05, 0.5, 0.95, 0.99])
    return {"mean": float(values.mean()), "std": float(values.std()), "q01": float(q[0]), "q05": float(q[1]),
            "median": float(q[2]), "q95": float(q[3]), "q99": float(q[4]), "pairs": int(len(values))}


def measure(ds: Dataset, pairs: int = 200_000, id_sample: int = 3000, seed: int = 0) -> dict[str, object]:
    """Genuine and impostor cosine statistics and intrinsic-dimension estimates of a dataset.

    Genuine: each probe against every gallery face of its identity (new photos of known people, as matching
    sees them). Impostor: ``pairs`` random gallery pairs of different identities. Dimension: TwoNN and PCA
    (90 % of variance) on ``id_sample`` gallery faces. Data without identities (uniform) has no genuine pairs.
    """
    rng = np.random.default_rng(seed)
    x, labels = ds.gallery, ds.labels
    out: dict[str, object] = {}
    if (labels >= 0).any():
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        genuine = []
        for q, lab in zip(ds.probes, ds.probe_labels):
            lo, hi = np.searchsorted(sorted_labels, [lab, lab + 1])
            genuine.append(x[order[lo:hi]] @ q)
        out["genuine"] = _summary(np.concatenate(genuine))
    i, j = rng.integers(0, len(x), (2, pairs))
    keep = (i != j) & ((labels[i] != labels[j]) | (labels[i] < 0))
    i, j = i[keep], j[keep]
    out["impostor"] = _summary(np.concatenate([np.einsum("ij,ij->i", x[i[s : s + 8192]], x[j[s : s + 8192]])
                                               for s in range(0, len(i), 8192)]))  # bounded temporaries
    # one face per identity: with a few photos per person the nearest two neighbours are mates at alike
    # distances, and TwoNN would measure the clusters, not the space the identities live in
    _, first = np.unique(labels, return_index=True) if (labels >= 0).any() else (None, np.arange(len(x)))
    sample = x[rng.choice(first, min(id_sample, len(first)), replace=False)]
    out["twonn_dimension"] = twonn_dimension(sample)
    out["pca_dimension_90"] = pca_dimension(sample)
    return out


def stats_line(stats: dict[str, object]) -> str:
    """One sentence for a bench section: what the data measured like."""
    parts = []
    g = stats.get("genuine")
    if g:
        parts.append(f"genuine cosine {g['mean']:.2f} ± {g['std']:.2f} (5-95 %: {g['q05']:.2f}-{g['q95']:.2f})")  # type: ignore[index]
    imp = stats["impostor"]
    parts.append(f"impostor {imp['mean']:.3f} ± {imp['std']:.3f} (99 %: {imp['q99']:.2f})")  # type: ignore[index]
    parts.append(f"intrinsic dimension {stats['twonn_dimension']:.1f} (TwoNN), {stats['pca_dimension_90']} PCA "
                 "components for 90 % of variance")
    return "; ".join(parts)
