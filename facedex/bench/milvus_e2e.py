"""The milvus-lite arm of ``facedex bench e2e``: the same faces in the server a user would otherwise pick.

milvus-lite runs as its own server process (``python -m milvus_lite server``: the embedded Milvus behind a
gRPC port), so its CPU is not the load generator's; the load generator inserts the gallery with pymilvus,
then queries it at each concurrency level with ``AsyncMilvusClient`` (one probe per call, like the HTTP
arm's one reference per request). Measured per level: latency percentiles, requests/s, top-1 agreement and
recall@10 against exact search, and the CPU seconds of the load generator and of the server.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from facedex.bench.common import interrupt
from facedex.bench.peers import MilvusUnavailable

COLLECTION = "faces"
KINDS = {"flat": "FLAT", "ivf": "IVF_FLAT", "hnsw": "HNSW"}


def cpu_seconds() -> float:
    """This process's user + system CPU time: the load generator's own cost, reported beside its numbers."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(log=print) -> Iterator[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """A milvus-lite server of its own (temp data folder, free port): (uri, pid); stopped and removed after."""
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as e:
        raise MilvusUnavailable(f"milvus-lite arm: pymilvus/milvus-lite are not installed here ({e}); install them with "
                                "`pip install -e '.[bench]'`") from e
    work = Path(tempfile.mkdtemp(prefix="facedex-bench-milvus-"))
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(work / "db"), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=(work / "server.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise MilvusUnavailable(f"milvus-lite arm: the server exited with code {proc.returncode}: "
                                        f"{(work / 'server.log').read_text()[-1500:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise MilvusUnavailable("milvus-lite arm: the server did not open its port in 120 s")
            time.sleep(0.2)
        log(f"milvus-lite server pid {proc.pid} on port {port}")
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        interrupt(proc, 30)
        shutil.rmtree(work, ignore_errors=True)


def load(uri: str, gallery: np.ndarray, kind: str, m: int, efc: int) -> dict[str, object]:
    """Create the collection, insert every face (row number = id), build the index and load it; timed."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri=uri)
    try:
        index_type = KINDS[kind]
        schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("v", DataType.FLOAT_VECTOR, dim=gallery.shape[1])
        params = client.prepare_index_params()
        params.add_index(field_name="v", index_type=index_type, metric_type="IP",
                         params={"FLAT": {}, "IVF_FLAT": {"nlist": m}, "HNSW": {"M": m, "efConstruction": efc}}[index_type])
        started = time.perf_counter()
        client.create_collection(COLLECTION, schema=schema, index_params=params)
        for start in range(0, len(gallery), 10_000):
            client.insert(COLLECTION, [{"id": start + i, "v": v} for i, v in enumerate(gallery[start : start + 10_000])])
        insert_s = time.perf_counter() - started
        client.flush(COLLECTION)
        client.load_collection(COLLECTION)
        return {"index": index_type, "m": m, "efc": efc, "insert_s": insert_s, "build_s": time.perf_counter() - started}
    finally:
        client.close()


async def level(uri: str, probes: np.ndarray, exact_i: np.ndarray, mates: list[set[int]], kind: str, knob: int,
                concurrency: int, requests: int, server_pid: int) -> dict[str, object]:
    """One concurrency level: ``requests`` single-probe searches from ``concurrency`` concurrent callers."""
    import psutil
    from pymilvus import AsyncMilvusClient

    params = {"metric_type": "IP", "params": {"FLAT": {}, "IVF_FLAT": {"nprobe": knob}, "HNSW": {"ef": knob}}[KINDS[kind]]}
    client = AsyncMilvusClient(uri=uri)
    latencies: list[float] = []
    found: dict[int, list[int]] = {}
    queue = list(range(requests))

    async def call(i: int) -> list[int]:
        hits = await client.search(COLLECTION, data=[probes[i % len(probes)]], limit=10, search_params=params,
                                   anns_field="v", output_fields=[])
        return [int(h["id"]) for h in hits[0]]

    async def worker() -> None:
        while queue:
            i = queue.pop()
            started = time.perf_counter()
            ids = await call(i)
            latencies.append(time.perf_counter() - started)
            found[i % len(probes)] = ids

    try:
        for i in range(min(requests, 4 * concurrency)):  # warm up the channel and the server's caches
            await call(i)
        srv = psutil.Process(server_pid)
        srv_cpu, cpu, started = sum(srv.cpu_times()[:2]), cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
        cpu, srv_cpu = cpu_seconds() - cpu, sum(srv.cpu_times()[:2]) - srv_cpu
    finally:
        await client.close()
    lat = np.array(latencies) * 1000
    top1 = np.mean([bool(ids) and ids[0] == exact_i[q, 0] for q, ids in found.items()])
    recall = np.mean([len(set(ids) & set(exact_i[q].tolist())) / 10 for q, ids in found.items()])
    mate_hits = sum(len(mates[q] & set(ids)) for q, ids in found.items())
    mate_total = sum(len(mates[q]) for q in found)
    return {"route_asked": f"milvus-lite {KINDS[kind]}", "concurrency": concurrency, "requests": requests,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "throughput_rps": requests / wall, "routes": {"milvus-lite": len(lat)},
            "top1_agreement": float(top1), "recall_at_10": float(recall), "mate_recall": mate_hits / max(mate_total, 1),
            "client_cpu_s": cpu, "client_cpu_share": cpu / wall,
            "server_cpu_s": srv_cpu, "wall_s": wall}


def run(gallery: np.ndarray, probes: np.ndarray, exact_i: np.ndarray, mates: list[set[int]], levels: list[int], requests: int, kind: str,
        m: int, efc: int, knob: int, log=print) -> dict[str, object]:  # type: ignore[no-untyped-def]
    with server(log) as (uri, pid):
        setup = load(uri, gallery, kind, m, efc)
        log(f"  milvus-lite {setup['index']}: {len(gallery):,} faces inserted in {setup['insert_s']:.0f} s, "
            f"loaded in {setup['build_s']:.0f} s")
        rows = []
        for c in levels:
            row = asyncio.run(level(uri, probes, exact_i, mates, kind, knob, c, requests, pid))
            rows.append(row)
            log(f"  milvus-lite c={c}: p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
                f"{row['throughput_rps']:.0f} req/s, top-1 {row['top1_agreement']:.3f}, client CPU {row['client_cpu_share']:.0%}")
    return {"setup": {**setup, "search_knob": knob, "cores": os.cpu_count()}, "rows": rows}
