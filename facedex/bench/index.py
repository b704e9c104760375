"""``facedex bench index``: our index against faiss HNSW and hnswlib, same data, same run.

For each size, a face-like dataset (``datasets.face_like``) with planted
probes and exact ground truth (numpy). Each library is built and queried in a
child process of its own, so its peak RSS is its own; the timed passes of all
libraries are interleaved, so drift of a shared machine during the run does not
favour one of them. Measured: build time (2 threads),
peak RSS over the data, bytes per vector on disk, cold-load time, and for each
``ef``: single-thread QPS (one query per call, as a matcher serves a request),
two-thread batched QPS, and the quality metrics:

- mate recall: of the planted same-identity faces that exact search returns in
  its top 10 above ``threshold``, the share the index also returns;
- top-1 agreement: the index's best candidate, re-scored exactly (as the
  Indexed Matcher does), equals exact search's best;
- recall@10 against exact search (reported; beyond the mates, face-like data's
  tail is near-tied noise, so it is not the target).

``data="uniform"`` runs the same on i.i.d. unit vectors (``datasets.uniform``):
no identities, so no mates; recall@10 is the measure there, and the hard case
for any graph index.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facedex.bench import ours, peers
from facedex.bench.common import machine, machine_line
from facedex.bench.faces_model import measure, stats_line
from facedex.bench.regimes import DATA as DATASETS
from facedex.bench.regimes import DESCRIPTION
from facedex.bruteforce.exact import topk

K = 10


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _reset_peak() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM), so the peak measured next is the build's, not the data load's."""
    Path("/proc/self/clear_refs").write_text("5")


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _row_ids(n: int) -> np.ndarray:
    """Face ids that encode row numbers (+1: the all-zero id means "removed" in the id map)."""
    ids = np.zeros((n, 16), np.uint8)
    ids[:, :8] = (np.arange(n, dtype=np.uint64) + 1).astype(">u8").view(np.uint8).reshape(n, 8)
    return ids


def _build(lib: str, x: np.ndarray, m: int, efc: int, precision: str):  # type: ignore[no-untyped-def]
    n, d = x.shape
    if lib.startswith("ours:"):
        return ours.build(*ours.parse(lib), x)
    if lib in peers.LIBS:
        return peers.build(lib, x, m, efc, precision)
    if lib == "facedex":
        from facedex.index import HnswIndex, IndexParams

        index = HnswIndex(d, IndexParams(m, efc, 64, precision))  # type: ignore[arg-type]
        index.add(_row_ids(n), x, threads=2)
        return index
    if lib == "usearch-raw":
        from usearch.index import Index

        index = Index(ndim=d, metric="ip", dtype=precision, connectivity=m, expansion_add=efc)
        index.add(np.arange(n, dtype=np.uint64), x, threads=2)
        return index
    if lib == "faiss-hnsw":
        import faiss

        faiss.omp_set_num_threads(2)
        index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = efc
        index.add(x)
        return index
    if lib == "pgvector":
        from facedex.bench.pgvector import PgVectorIndex

        return PgVectorIndex(x, m, efc)
    if lib == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=n, ef_construction=efc, M=m)
        index.add_items(x, np.arange(n), num_threads=2)
        return index
    raise ValueError(lib)


def _search(lib: str, index, q: np.ndarray, ef: int, threads: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """(len(q), K) row numbers."""
    if lib.startswith("ours:") or lib in peers.LIBS:  # the sweep value: ef, re-score depth R or nprobe
        return index.search(q, K, ef, threads)
    if lib == "facedex":
        ids, _ = index.search(q, K, ef=ef, threads=threads)
        return np.ascontiguousarray(ids[:, :, :8]).view(">u8").reshape(len(q), -1).astype(np.int64) - 1
    if lib == "usearch-raw":
        index.expansion_search = ef
        return np.asarray(index.search(q, K, threads=threads).keys).reshape(len(q), -1).astype(np.int64)
    if lib == "faiss-hnsw":
        import faiss

        faiss.omp_set_num_threads(threads)
        index.hnsw.efSearch = ef
        return index.search(q, K)[1]
    if lib == "pgvector":
        return index.search(q, K, ef, threads)
    index.set_ef(ef)
    return index.knn_query(q, k=K, num_threads=threads)[0].astype(np.int64)


def _save_load(lib: str, index, folder: Path) -> tuple[int, float | None]:  # type: ignore[no-untyped-def]
    """(bytes on disk, cold-load seconds; None where loading is not a step of its own)."""
    if lib == "pgvector":
        return index.nbytes(), None
    if lib.startswith("ours:") or lib in peers.LIBS:
        return index.save_load(folder / "arm")  # type: ignore[no-any-return]
    path = folder / lib
    if lib == "facedex":
        from facedex.index import HnswIndex

        files = index.save(path)
        started = time.perf_counter()
        HnswIndex.load(path, index.dim, index.params, view=True)
        return sum(f.stat().st_size for f in files), time.perf_counter() - started
    if lib == "usearch-raw":
        from usearch.index import Index

        index.save(str(path))
        started = time.perf_counter()
        Index.restore(str(path), view=True)
        return path.stat().st_size, time.perf_counter() - started
    if lib == "faiss-hnsw":
        import faiss

        faiss.write_index(index, str(path))
        started = time.perf_counter()
        faiss.read_index(str(path))
        return path.stat().st_size, time.perf_counter() - started
    import hnswlib

    index.save_index(str(path))
    started = time.perf_counter()
    loaded = hnswlib.Index(space="ip", dim=index.dim)
    loaded.load_index(str(path))
    return path.stat().st_size, time.perf_counter() - started


Arm = tuple[str, str, int, int, list[int] | None]


def parse_arms(spec: str) -> list[Arm]:
    """``lib:precision:M:efC[:ef/ef/...],...`` -> [(lib, precision, M, efC, efs or None)].

    Precision is ignored by f32-only libraries; an arm's own ef list (``/``-separated) replaces ``--efs`` for
    that arm, so one run can sweep our index to high ef without paying for the peers' slow tail. For the flat
    code scans (``peers.SCANS``) precision is the re-score store (f16/f32) and the sweep is the re-score depth R.
    Our engine's arms are ``ours:<kind>[:key=value+...][:ef/ef/...]`` (``facedex.bench.ours``).
    """
    arms: list[Arm] = []
    for item in spec.split(","):
        parts = item.split(":")
        if parts[0] == "ours":
            if len(parts) > 4:
                raise ValueError(f"arm {item!r}: expected ours:<kind>[:key=value+...][:ef/ef/...]")
            lib = ":".join(parts[:3]) if len(parts) > 2 and parts[2] else ":".join(parts[:2])
            kind, params = ours.parse(lib)
            efs = [int(e) for e in parts[3].split("/")] if len(parts) == 4 else None
            arms.append((lib, params.get("precision", "default"), int(params.get("m", 0)), int(params.get("efc", 0)), efs))
            continue
        if len(parts) not in (4, 5):
            raise ValueError(f"arm {item!r}: expected lib:precision:M:efC[:ef/ef/...]")
        lib, precision, m, efc = parts[:4]
        efs = [int(e) for e in parts[4].split("/")] if len(parts) == 5 else None
        arms.append((lib, precision if lib in ("facedex", "usearch-raw", *peers.SCANS) else "f32", int(m), int(efc), efs))
    return arms


def _child(lib: str, data_path: str, probes_path: str, m: int, efc: int, precision: str,
           commands: mp.Queue, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Build one library's index, report its cost, then answer timed passes until told to stop.

    The child stays alive between passes so the parent can interleave the arms' passes: a machine whose
    speed drifts during a long run (a shared VM does) then slows every arm alike, not whichever ran last.
    """
    x = np.load(data_path)
    q = np.load(probes_path)
    _reset_peak()
    base = _rss_mb()
    started = time.perf_counter()
    index = _build(lib, x, m, efc, precision)
    build_s = time.perf_counter() - started
    peak = _peak_mb() - base
    if lib == "pgvector":  # the build runs in the server: its own clock and memory, not the loading of rows
        build_s, peak = index.build_s, index.peak_mb
    del x  # every library holds its own copy; the data is not needed for searching
    with tempfile.TemporaryDirectory() as tmp:
        nbytes, load_s = _save_load(lib, index, Path(tmp))
    out.put({"lib": lib, "build_s": build_s, "peak_rss_mb": peak, "bytes": nbytes, "load_s": load_s,
             "code_bytes": getattr(index, "code_bytes", None), "rescore_bytes": getattr(index, "rescore_bytes", None),
             "insert_s": getattr(index, "insert_s", None), "final_bytes": getattr(index, "final_bytes", None),
             "chosen": getattr(index, "chosen", None)})
    warm: set[int] = set()
    try:
        while (command := commands.get()) is not None:
            ef, want_rows = command
            if ef not in warm:
                _search(lib, index, q[:50], ef, 1)
                warm.add(ef)
            started = time.perf_counter()
            rows = [_search(lib, index, q[i : i + 1], ef, 1)[0] for i in range(len(q))]
            qps1 = len(q) / (time.perf_counter() - started)
            started = time.perf_counter()
            _search(lib, index, q, ef, 2)
            qps2 = len(q) / (time.perf_counter() - started)
            found = None
            if want_rows:
                found = np.full((len(q), max(len(r) for r in rows)), -1, np.int64)
                for i, r in enumerate(rows):
                    found[i, : len(r)] = r
            out.put({"qps_1thread": qps1, "qps_2threads_batched": qps2, "found": found})
    finally:
        if lib == "pgvector" or lib in peers.LIBS or lib.startswith("ours:"):
            index.close()


class _ArmProcess:
    """The parent's handle on one child: send a command, get its answer; a dead child is an error, not a hang."""

    def __init__(self, ctx: mp.context.SpawnContext, lib: str, args: tuple[object, ...]) -> None:
        self.lib = lib
        self.commands: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        self.out: mp.Queue = ctx.Queue()  # type: ignore[type-arg]
        self.proc = ctx.Process(target=_child, args=(lib, *args, self.commands, self.out), daemon=True)
        self.proc.start()

    def answer(self) -> dict:  # type: ignore[type-arg]
        import queue

        while True:
            try:
                return self.out.get(timeout=1.0)  # type: ignore[no-any-return]
            except queue.Empty:
                if not self.proc.is_alive():
                    raise RuntimeError(f"the {self.lib} child exited with code {self.proc.exitcode} and no result") from None

    def ask(self, ef: int, want_rows: bool) -> dict:  # type: ignore[type-arg]
        self.commands.put((ef, want_rows))
        return self.answer()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.commands.put(None)
            self.proc.join(timeout=60)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def quality(found: np.ndarray, ds_labels: np.ndarray, probe_labels: np.ndarray, x: np.ndarray, q: np.ndarray,
            exact_s: np.ndarray, exact_i: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Mate recall is None when the data has no mates above the threshold (uniform data)."""
    hits = total = 0
    top1 = 0
    recall10 = 0.0
    for i in range(len(q)):
        cand = found[i][found[i] >= 0]
        mates = {int(j) for j, s in zip(exact_i[i], exact_s[i]) if s >= threshold and ds_labels[j] == probe_labels[i]}
        hits += len(mates & set(cand.tolist()))
        total += len(mates)
        if len(cand):
            best = cand[np.argmax(x[cand] @ q[i])]  # exact re-score, as the Indexed Matcher does
            top1 += int(best == exact_i[i, 0])
        recall10 += len(set(cand.tolist()) & set(exact_i[i].tolist())) / K
    return {"mate_recall": hits / total if total else None, "top1_agreement": top1 / len(q), "recall_at_10": recall10 / len(q)}


def run(sizes: list[int], dim: int, n_probes: int, efs: list[int], arms: list[Arm],
        threshold: float, seed: int, checkpoint: Callable[[dict[str, object]], object] | None = None,
        repeat: int = 3, data: str = "face-like") -> dict[str, object]:
    """Every arm on every size; ``checkpoint`` gets the record so far after each build and each ef (a 1M run takes an hour).

    The arms are built one after another, each in a child process of its own (its peak RSS is its own); then,
    for each ef, the ``repeat`` timed passes go round the arms in turn (the starting arm rotating), and each
    arm's QPS is the median of its passes.
    """
    ctx = mp.get_context("spawn")
    rows: list[dict[str, object]] = []
    record: dict[str, object] = {"benchmark": "index", "machine": machine(), "threshold": threshold, "seed": seed,
                                 "probes": n_probes, "repeat": repeat, "data": data, "interleaved": True, "rows": rows}
    for n in sizes:
        ds = DATASETS[data](n, dim=dim, n_probes=n_probes, seed=seed)
        record.setdefault("data_stats", {})[str(n)] = stats = measure(ds)  # type: ignore[index]
        print(f"  data {data} n={n}: {stats_line(stats)}", flush=True)
        exact_s, exact_i = topk(ds.probes, ds.gallery, K)  # exact truth: blocked numpy GEMM
        children: list[_ArmProcess] = []
        with tempfile.TemporaryDirectory() as tmp:
            data_path, probes_path = os.path.join(tmp, "x.npy"), os.path.join(tmp, "q.npy")
            np.save(data_path, ds.gallery)
            np.save(probes_path, ds.probes)
            try:
                size_rows = []
                for lib, precision, m, efc, arm_efs in arms:
                    child = _ArmProcess(ctx, lib, (data_path, probes_path, m, efc, precision))
                    children.append(child)
                    row = child.answer()
                    row.update(n=n, dim=dim, bytes_per_vector=row["bytes"] / n, precision=precision, m=m, efc=efc,
                               efs=arm_efs or efs, sweeps=[])
                    rows.append(row)
                    size_rows.append(row)
                    print(f"  {lib} n={n}: build {row['build_s']:.1f}s, peak {row['peak_rss_mb']:.0f} MB", flush=True)
                    if checkpoint is not None:
                        checkpoint(record)
                for ef in sorted({e for row in size_rows for e in row["efs"]}):  # type: ignore[attr-defined]
                    active = [(child, row) for child, row in zip(children, size_rows) if ef in row["efs"]]  # type: ignore[operator]
                    passes: list[list[dict]] = [[] for _ in active]  # type: ignore[type-arg]
                    for p in range(repeat):
                        for j in [(p + i) % len(active) for i in range(len(active))]:
                            passes[j].append(active[j][0].ask(ef, want_rows=not passes[j]))
                    for (_, row), done in zip(active, passes):
                        sweep = {"ef": ef, "qps_1thread": statistics.median(d["qps_1thread"] for d in done),
                                 "qps_2threads_batched": statistics.median(d["qps_2threads_batched"] for d in done)}
                        sweep.update(quality(done[0]["found"], ds.labels, ds.probe_labels, ds.gallery, ds.probes, exact_s, exact_i,
                                             threshold))
                        row["sweeps"].append(sweep)  # type: ignore[attr-defined]
                        print(f"  {row['lib']} n={n} ef={ef}: mate={_ratio(sweep['mate_recall'])} "
                              f"r@10={sweep['recall_at_10']:.3f} qps={sweep['qps_1thread']:.0f}", flush=True)
                    if checkpoint is not None:
                        checkpoint(record)
            finally:
                for child in children:
                    child.stop()
    return record


def markdown(record: dict[str, object], command: str, plot: str | None) -> str:
    rows = record["rows"]  # type: ignore[assignment]
    spread = ", ".join(f"{1 / np.sqrt(d):.3f}" for d in sorted({r["dim"] for r in rows}))  # type: ignore[index]
    dims = ", ".join(sorted({str(r["dim"]) for r in rows}))  # type: ignore[index]
    sizes = ", ".join(f"{n:,}" for n in sorted({r["n"] for r in rows}))  # type: ignore[index]
    turns = ", the passes of all libraries taken in turn (a drifting machine slows them alike)" if record.get("interleaved") else ""
    regime = str(record.get("data", "face-like"))
    if regime == "uniform":
        data = f"{dims}-d i.i.d. uniform unit vectors (no identities, so no mates: recall@10 is the measure), "
    elif regime == "face-like":
        data = (f"{dims}-d face-like identity clusters (4 faces per identity, same-identity cosine 0.5-0.8, "
                f"impostors 0 ± {spread}), ")
    else:
        data = f"{dims}-d {DESCRIPTION[regime]}, "
    measured = record.get("data_stats") or {}
    if measured:
        data += "measured " + "; ".join(f"at {int(n):,}: {stats_line(st)}" for n, st in measured.items()) + "; "  # type: ignore[union-attr]
    lines = [
        f"## Index build and search: {sizes} × {dims}, {record.get('data', 'face-like')} data",
        "",
        f"Machine: {machine_line(record['machine'])}.  ",  # type: ignore[arg-type]
        f"Data: {data}"
        f"{record['probes']} {'random' if record.get('data') == 'uniform' else 'planted'} probes, seed {record['seed']}; inner product, 2 build threads, all rows from one run.  ",
        f"Command: `{command}`",
        "",
        "| library | faces | precision | M | efC | build (s) | peak RSS over data (MB) | bytes/vector | cold load (s) | ef | mate recall | top-1 = exact | recall@10 | QPS 1 thread | QPS 2 threads, batched |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:  # type: ignore[union-attr]
        for j, s in enumerate(r["sweeps"]):
            head = (f"| {r['lib']} | {r['n']:,} | {r['precision']} | {r['m']} | {r['efc']} | {r['build_s']:.1f} | "
                    f"{r['peak_rss_mb']:.0f} | {r['bytes_per_vector']:.0f} | {_opt(r['load_s'])} ") if j == 0 else "| | | | | | | | | "
            lines.append(head + f"| {s['ef']} | {_ratio(s['mate_recall'], 4)} | {s['top1_agreement']:.4f} | "
                         f"{s['recall_at_10']:.3f} | {s['qps_1thread']:,.0f} | {s['qps_2threads_batched']:,.0f} |")
    lines += [
        "",
        f"Mate recall: planted same-identity faces in exact search's top 10 with similarity ≥ {record['threshold']} "
        "that the index also returns in its top 10. Top-1: the index's best candidate after exact re-scoring equals "
        f"exact search's best. QPS: the median of {record.get('repeat', 1)} pass(es) over the probes{turns}. Peak RSS over data: the build process's peak resident size during the build (VmHWM, "
        "reset after the data is loaded) minus its size with the data loaded. "
        "facedex's index is usearch behind `facedex.index.HnswIndex` (id map included); usearch-raw is the library "
        "alone, for the cost of our wrapper.",
    ]
    if any(r["lib"] == "pgvector" for r in rows):  # type: ignore[union-attr]
        lines[-1] += (" pgvector: HNSW inside an embedded PostgreSQL (shared_buffers 6 GB, index prewarmed, one parallel "
                      "maintenance worker); its build column is the CREATE INDEX alone, its memory the server processes' "
                      "PSS during it, its bytes the index relation; its QPS are SQL queries over a loopback connection "
                      "(two connections for the two-thread column), as an application would run them.")
    libs = {r["lib"] for r in rows}  # type: ignore[union-attr]
    scans = [r for r in rows if r["lib"] in peers.SCANS]  # type: ignore[union-attr]
    if scans:
        sizes_b = "; ".join(f"{r['lib']} M={r['m']}: {r['code_bytes'] / r['n']:.0f} B codes + {r['rescore_bytes'] / r['n']:.0f} B "
                            f"{r['precision']} re-score vectors" for r in scans if r.get("code_bytes"))
        lines[-1] += (" faiss flat code scans (`faiss-binary`: sign bits, of random projections when M > 0; `faiss-pqfs`: "
                      "PQ fast-scan with M 4-bit codes; `faiss-rabitq`): every code is scanned, the best R candidates are "
                      "re-scored exactly from the float store, and their ef column is R. Per face: " + sizes_b + ".")
    if libs & set(peers.MILVUS):
        inserts = "; ".join(f"{r['lib']} {r['insert_s']:.1f} s" for r in rows if r.get("insert_s") is not None)  # type: ignore[union-attr]
        lines[-1] += (" milvus-lite (embedded Milvus, in the arm's own process) is queried through pymilvus as an "
                      "application would: one `search` call per query, the batched column one call with every query; "
                      "its ef column is nprobe for IVF_FLAT, ef for HNSW, unused for FLAT; its build covers create, "
                      f"insert, flush and index build (of which inserting the rows: {inserts}).")
    if any(str(lib).startswith("ours:") for lib in libs):
        lines[-1] += " `ours:<kind>` arms run facedex's own index interface (`facedex/bench/ours.py`)."
    for r in rows:  # type: ignore[union-attr]
        if r.get("chosen"):
            lines += ["", *chosen_summary(r, rows)]  # type: ignore[arg-type]
    if plot:
        lines += ["", f"![mate recall vs single-thread QPS]({plot})"]
    return "\n".join(lines)


GRAPHS = ("faiss-hnsw", "hnswlib", "usearch-raw", "facedex", "ours:hnsw")


def chosen_summary(row: dict, rows: list[dict]) -> list[str]:  # type: ignore[type-arg]
    """What the Indexer chose, its memory per face, and its speed against each HNSW peer at equal top-1 (issue 11)."""
    c, n = row["chosen"], row["n"]
    ours_ = row["sweeps"][0]
    out = [
        f"**Chosen by the Indexer's calibration** (`ours:chosen`, {n:,} faces): {c['kind']} {c['params']}, R = {c['rescore']} "
        f"(on its {c['samples']} calibration photos: top-1 {c['top1']}, mate recall@10 {c['recall10']}; "
        f"{len(c['curve'])} points measured in {c['seconds']:.0f} s{'; WARNING: ' + c['warning'] if c.get('warning') else ''}). "
        f"On the planted probes: top-1 = exact {ours_['top1_agreement']:.4f}, mate recall@10 {_ratio(ours_['mate_recall'], 4)}, "
        f"{ours_['qps_1thread']:,.0f} q/s on one thread (one query per call), {ours_['qps_2threads_batched']:,.0f} q/s batched "
        f"on two threads. Memory per face: {row['code_bytes'] / n:.0f} B scanned codes, {row['rescore_bytes'] / n:.0f} B fp16 "
        f"re-score rows (memory-mapped), and {row['final_bytes'] / n:.0f} B fp32 rows on disk read only for the answered faces.",
    ]
    for peer in rows:
        if peer["lib"] not in GRAPHS or peer["n"] != n or not peer["sweeps"]:
            continue
        equal = [sw for sw in peer["sweeps"] if sw["top1_agreement"] >= ours_["top1_agreement"]]
        if equal:
            sw = min(equal, key=lambda s_: s_["ef"])
            out.append(f"- vs {peer['lib']} at equal top-1 (ef {sw['ef']}: {sw['top1_agreement']:.4f}): "
                       f"{ours_['qps_1thread'] / sw['qps_1thread']:.1f}x on one thread, "
                       f"{ours_['qps_2threads_batched'] / sw['qps_2threads_batched']:.1f}x batched.")
        else:
            sw = max(peer["sweeps"], key=lambda s_: (s_["top1_agreement"], s_["qps_1thread"]))
            out.append(f"- vs {peer['lib']}: never reaches top-1 {ours_['top1_agreement']:.4f} (best {sw['top1_agreement']:.4f} at "
                       f"ef {sw['ef']}, {sw['qps_1thread']:,.0f} q/s); against that best: "
                       f"{ours_['qps_1thread'] / sw['qps_1thread']:.1f}x on one thread, "
                       f"{ours_['qps_2threads_batched'] / sw['qps_2threads_batched']:.1f}x batched, at a higher top-1.")
    return out


def _opt(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds:.3f}"


def _ratio(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def plot(record: dict[str, object], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = sorted({r["n"] for r in record["rows"]})  # type: ignore[union-attr,index]
    data = str(record.get("data", "face-like"))
    metric = "recall_at_10" if data == "uniform" else "mate_recall"
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, n in zip(axes[0], sizes):
        for r in record["rows"]:  # type: ignore[union-attr]
            if r["n"] != n:
                continue
            xs = [s[metric] for s in r["sweeps"]]
            ys = [s["qps_1thread"] for s in r["sweeps"]]
            ax.plot(xs, ys, marker="o", label=f"{r['lib']} {r['precision']} M={r['m']} efC={r['efc']}")
            for x, y, s in zip(xs, ys, r["sweeps"]):
                ax.annotate(f"ef={s['ef']}", (x, y), fontsize=7)
        dims = sorted({r["dim"] for r in record["rows"] if r["n"] == n})  # type: ignore[union-attr,index]
        ax.set_title(f"{n:,} × {'/'.join(map(str, dims))} {data}")
        ax.set_xlabel(metric.replace("_at_", "@").replace("_", " "))
        ax.set_ylabel("queries/s, 1 thread")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return True
