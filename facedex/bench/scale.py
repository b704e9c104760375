"""``facedex bench scale``: single-query latency of one index kind's scan at 10M faces (issue 11).

Why a command of its own: 10M x 512 float32 descriptors are 20 GB, more than this machine class can hold beside
anything else, so the gallery is generated and encoded in chunks of identities (the isotropic identity clusters
of :func:`facedex.bench.datasets.face_like`: unit centres, faces ``normalize(centre + noise)``), and only the
scanned codes stay in memory. The scan is measured whole; the exact re-score of the R candidates is measured
on a 1M fp16 store with the same R (its cost depends on R and the dimension, not on the list size: R row
gathers) and added, which the table says. Quality at 10M is not measured here (no exact truth without the
vectors).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, ClassVar

import numpy as np

from facedex.bench.common import machine, machine_line

FACES_PER_IDENTITY = 4
SIGMA = (0.5, 1.0)


def _chunk(rng: np.random.Generator, n_ids: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(faces, centres) of ``n_ids`` new identities, 4 faces each, shuffled."""
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rows = rng.permutation(np.repeat(np.arange(n_ids), FACES_PER_IDENTITY))
    noise = rng.standard_normal((len(rows), dim), dtype=np.float32)
    noise *= (rng.uniform(*SIGMA, len(rows)).astype(np.float32) / np.linalg.norm(noise, axis=1))[:, None]
    faces = centres[rows] + noise
    faces /= np.linalg.norm(faces, axis=1, keepdims=True)
    return faces, centres


def run(n: int, dim: int, kind: str, params: dict[str, Any], rescore: int, n_probes: int, repeat: int, seed: int,
        log=print) -> dict[str, object]:  # type: ignore[no-untyped-def]
    import faiss

    from facedex.index import FaceIndex
    from facedex.index.registry import kind as kind_class

    rng = np.random.default_rng(seed)
    chunk_ids = 100_000
    started = time.perf_counter()
    faces, centres = _chunk(rng, chunk_ids, dim)
    scan = kind_class(kind).build(faces, params)  # trains on the first chunk, as a build trains on a sample
    probe_centres = centres[rng.choice(len(centres), n_probes, replace=False)]
    while len(scan) < n:
        faces, _ = _chunk(rng, min(chunk_ids, (n - len(scan) + FACES_PER_IDENTITY - 1) // FACES_PER_IDENTITY), dim)
        scan.add(faces[: n - len(scan)])
        log(f"  encoded {len(scan):,} / {n:,}")
    build_s = time.perf_counter() - started
    noise = rng.standard_normal((n_probes, dim), dtype=np.float32)
    noise *= (rng.uniform(*SIGMA, n_probes).astype(np.float32) / np.linalg.norm(noise, axis=1))[:, None]
    probes = probe_centres + noise
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)

    # the re-score of R candidates, on a 1M fp16 store (random rows: every gather a cache miss, as at 10M)
    store_n = 1_000_000
    store32 = np.empty((store_n, dim), np.float32)
    for start in range(0, store_n, chunk_ids * FACES_PER_IDENTITY):
        part, _ = _chunk(rng, chunk_ids, dim)
        store32[start : start + len(part)] = part[: store_n - start]
    store = FaceIndex(_NoScan(),  # type: ignore[arg-type]
                       np.zeros((store_n, 16), np.uint8), store32, store32.astype(np.float16), rescore_n=rescore)
    cands = rng.integers(0, store_n, size=(n_probes, rescore))

    scan_ms: list[float] = []
    rescore_ms: list[float] = []
    batched: list[float] = []
    for _ in range(repeat):  # interleaved: each pass times the scan, then the re-score, then the batched scan
        faiss.omp_set_num_threads(1)
        times = []
        for i in range(n_probes):
            t = time.perf_counter()
            scan.search(probes[i : i + 1], rescore)
            times.append(time.perf_counter() - t)
        scan_ms.append(1000 * statistics.median(times))
        times = []
        for i in range(n_probes):
            t = time.perf_counter()
            store.rerank(probes[i : i + 1], cands[i : i + 1], 10)
            times.append(time.perf_counter() - t)
        rescore_ms.append(1000 * statistics.median(times))
        faiss.omp_set_num_threads(2)
        t = time.perf_counter()
        scan.search(probes, rescore)
        batched.append(n_probes / (time.perf_counter() - t))
    return {
        "benchmark": "scale", "machine": machine(), "n": n, "dim": dim, "kind": kind, "params": params, "rescore": rescore,
        "probes": n_probes, "repeat": repeat, "seed": seed, "build_s": build_s, "code_bytes_per_face": scan.code_bytes(),
        "scan_ms": statistics.median(scan_ms), "rescore_ms": statistics.median(rescore_ms),
        "scan_qps_2threads_batched": statistics.median(batched),
    }


class _NoScan:
    """A FaceIndex needs a scan; measuring its re-score alone never calls it."""

    kind = "none"
    params: ClassVar[dict[str, Any]] = {}


def markdown(r: dict, command: str) -> str:  # type: ignore[type-arg]
    total = r["scan_ms"] + r["rescore_ms"]
    return "\n".join([
        f"## Scale: {r['n']:,} × {r['dim']}, isotropic identity clusters, one {r['kind']} scan",
        "",
        f"Machine: {machine_line(r['machine'])}.  ",
        f"Data: {r['n']:,} faces of 4 per identity (face-like: unit centres, noise norm 0.5-1.0), generated and encoded "
        f"in chunks (only the codes are kept: 20 GB of float32 would not fit beside them); {r['probes']} probes of "
        f"gallery identities, median of {r['repeat']} passes.  ",
        f"Command: `{command}`",
        "",
        "| faces | kind | params | codes (B/face) | encode (s) | scan, 1 query, 1 thread (ms) | re-score R (ms) | "
        "total per query (ms) | single-thread q/s | scan q/s, 2 threads batched |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {r['n']:,} | {r['kind']} | {r['params']} | {r['code_bytes_per_face']:.0f} | {r['build_s']:.0f} | {r['scan_ms']:.2f} | "
        f"{r['rescore_ms']:.3f} (R = {r['rescore']}) | {total:.2f} | {1000 / total:,.0f} | {r['scan_qps_2threads_batched']:,.0f} |",
        "",
        f"The scan is measured over all {r['n']:,} codes. The re-score column is measured on a 1M store: the R candidates are "
        "gathered at random rows (each a cache miss, as in a larger list) and re-scored, whose cost "
        "depends on R and the dimension only; the total adds the two. Quality is not measured here (the "
        "1M sections measure it with exact truth); the scan is linear in the list size, so beyond this a list is "
        "sharded across matchers rather than given a larger R.",
    ])
