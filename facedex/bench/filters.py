"""``facedex bench filters``: filtered brute-force matching against an unfiltered scan of the same list, and a request
over several lists merged by the proxy's code.

In process, no HTTP and no PostgreSQL: a list matrix is built as the brute-force Matcher caches it (descriptors,
face ids, and the filter columns of :mod:`facedex.bruteforce.columns`), and each request goes through the Matcher's
own search (``batching.run_search``: filter mask, gathered top-k, similarity mapping). Filters keep about 1 %, 10 %
and 50 % of the list, by creation time (contiguous rows), by user data (rows spread evenly over the list), by
external id and by face id. Every arm is timed once per pass, passes interleaved, medians reported; each arm's
top-10 is checked against numpy on the kept rows. The multi-list part sends one candidate set over ``lists`` lists
of ``size`` faces each through ``proxy.app.Router.match_sets`` (sub-requests side by side, exact merge) and the Matcher's ``Batcher``, against one
list of the same size and against the same lists asked one after another; each list has faces of its own.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from facedex import descriptors, wire
from facedex.bench.common import machine, machine_line
from facedex.bench.datasets import face_like
from facedex.bruteforce.batching import Batcher, run_search
from facedex.bruteforce.cache import ListMatrix
from facedex.faces.store import FaceMeta
from facedex.proxy.app import Router

BASE_US = 1_700_000_000_000_000  # creation times: one µs apart from here, in row order


def version_of(dim: int) -> int:
    for v in descriptors.versions():
        if v.dim == dim:
            return v.version
    raise ValueError(f"no descriptor version has dimension {dim}")


def cached_matrix(vectors: np.ndarray, version: int, rng: np.random.Generator) -> ListMatrix:
    """A list matrix as the Matcher caches it, over ``vectors`` (not copied), with filter columns."""
    n = vectors.shape[0]
    m = ListMatrix(uuid.uuid4(), uuid.uuid4(), version)
    m.vectors = vectors
    m.ids = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw = m.ids.tobytes()
    m.pos = {raw[16 * i : 16 * i + 16]: i for i in range(n)}
    m.n = n
    m.meta.grow(n, 0)
    # user data "<i % 2>/<i % 10>/<i % 100>": prefixes keep 50 % and 10 %, a whole value 1 %, spread over the list
    m.meta.put(slice(0, n), FaceMeta(BASE_US + np.arange(n, dtype=np.int64), [f"e{i}" for i in range(n)],
                                     [f"{i % 2}/{i % 10}/{i % 100}" for i in range(n)]))
    return m


def filter_arms(m: ListMatrix) -> list[tuple[str, float, list[bytes] | None, wire.MatchFilters | None]]:
    """(name, share kept, face_ids, filters) of each filtered arm."""
    n = m.n
    arms: list[tuple[str, float, list[bytes] | None, wire.MatchFilters | None]] = []
    for keep in (0.01, 0.10, 0.50):
        arms.append((f"create_time range, {keep:.0%}", keep, None,
                     wire.MatchFilters(create_time_gte_us=BASE_US, create_time_lt_us=BASE_US + int(n * keep))))
    arms += [
        ("user_data exact, 1%", 0.01, None, wire.MatchFilters(user_data="1/3/13")),
        ("user_data prefix, 10%", 0.10, None, wire.MatchFilters(user_data_prefix="1/3/")),
        ("user_data prefix, 50%", 0.50, None, wire.MatchFilters(user_data_prefix="1/")),
    ]
    external = [f"e{i}" for i in range(0, n, max(1, n // 10_000))][:10_000]  # the most a request may name
    arms.append((f"external_ids ({len(external):,})", len(external) / n, None, wire.MatchFilters(external_ids=external)))
    step = max(1, n // 100_000)
    face_ids = [m.ids[i].tobytes() for i in range(0, n, step)][:100_000]
    arms.append((f"face_ids ({len(face_ids):,})", len(face_ids) / n, face_ids, None))
    arms.append(("create_time 50% + user_data prefix 10%", 0.05, None,
                 wire.MatchFilters(create_time_gte_us=BASE_US, create_time_lt_us=BASE_US + n // 2, user_data_prefix="1/3/")))
    return arms


def _exact_ok(m: ListMatrix, resp: wire.MatchResponse, q: np.ndarray, rows: np.ndarray | None) -> bool:
    """The answer's top-10 similarities are numpy's on the kept rows."""
    scores = m.vectors[: m.n] @ q
    scores = scores if rows is None else scores[rows]
    want = np.clip(np.sort(scores)[::-1][:10], 0, 1)
    got = np.frombuffer(resp.results[0].similarities, np.float32)
    return bool(len(got) == len(want) and np.allclose(got, want, atol=1e-5))


class _InProcessBruteForce:
    """The proxy's brute-force route, answered over in-memory matrices (no HTTP, no head read) by the Matcher's own
    scheduling (:class:`~facedex.bruteforce.batching.Batcher`: its worker threads, batching and one large scan at a time)."""

    name = "bruteforce"

    def __init__(self, matrices: dict[bytes, ListMatrix], executor: ThreadPoolExecutor) -> None:
        self.matrices = matrices
        self.batcher = Batcher(executor)

    async def match(self, req: wire.MatchRequest) -> wire.MatchResponse:
        return await self.batcher.search(self.matrices[req.list_id], req)


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


async def run(size: int, dim: int, repeat: int, lists: int, seed: int, log: Callable[[str], None] = print) -> dict[str, object]:
    version = version_of(dim)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    data = face_like(size, dim=dim, n_probes=repeat, seed=seed)
    matrix = cached_matrix(data.gallery, version, rng)
    log(f"built a {size:,} x {dim} cached list in {time.perf_counter() - started:.1f}s")
    probes = data.probes.astype("<f4")

    def request(m: ListMatrix, q: np.ndarray, face_ids: list[bytes] | None = None,
                filters: wire.MatchFilters | None = None) -> wire.MatchRequest:
        return wire.MatchRequest(m.account_id.bytes, m.list_id.bytes, version, q.tobytes(), limit=10,
                                 face_ids=face_ids, filters=filters)

    arms = filter_arms(matrix)
    times: dict[str, list[float]] = {"none": [], **{name: [] for name, *_ in arms}}
    select_times: dict[str, list[float]] = {name: [] for name, *_ in arms}
    for p in range(repeat):  # passes interleave the arms, so drift hits all alike
        q = probes[p]
        for name, _, face_ids, filters in [("none", 1.0, None, None), *arms]:
            req = request(matrix, q, face_ids, filters)
            t = time.perf_counter()
            run_search(matrix, [req])
            times[name].append(time.perf_counter() - t)
            if name != "none":
                t = time.perf_counter()
                matrix.select(face_ids, filters)
                select_times[name].append(time.perf_counter() - t)
    unfiltered = _median_ms(times["none"])
    rows = []
    for name, keep, face_ids, filters in arms:
        kept_rows = matrix.select(face_ids, filters)
        resp = run_search(matrix, [request(matrix, probes[0], face_ids, filters)])[0]
        assert kept_rows is not None
        rows.append({
            "filter": name, "target_share": keep, "kept": len(kept_rows), "ms": _median_ms(times[name]),
            "select_ms": _median_ms(select_times[name]), "unfiltered_ms": unfiltered,
            "ratio_to_unfiltered": _median_ms(times[name]) / unfiltered,
            "exact": _exact_ok(matrix, resp, probes[0], kept_rows),
        })
        log(f"{name}: {rows[-1]['ms']:.1f} ms (unfiltered {unfiltered:.1f} ms)")
    multi = await _multi(matrix, lists, version, probes, repeat, seed, rng)
    log(f"{lists} lists: {multi['ms']:.1f} ms; one list: {multi['one_list_ms']:.1f} ms")
    return {"benchmark": "filters", "machine": machine(), "size": size, "dim": dim, "repeat": repeat, "seed": seed,
            "unfiltered_ms": unfiltered, "unfiltered_exact": _exact_ok(matrix, run_search(matrix, [request(matrix, probes[0])])[0],
                                                                        probes[0], None),
            "rows": rows, "multi": multi}


async def _multi(first: ListMatrix, lists: int, version: int, probes: np.ndarray, repeat: int, seed: int,
                 rng: np.random.Generator) -> dict[str, object]:
    matrices = [first]
    for i in range(lists - 1):  # each list its own faces: every sub-request streams a matrix of its own from memory
        data = face_like(first.n, dim=first.dim, n_probes=1, seed=seed + 1 + i)
        matrices.append(cached_matrix(data.gallery, version, rng))
    executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="exact")  # as the brute-force Matcher runs searches
    router = Router([], _InProcessBruteForce({m.list_id.bytes: m for m in matrices}, executor))  # type: ignore[arg-type]

    def sets(q: np.ndarray, ms: list[ListMatrix]) -> wire.MatchSetsRequest:
        return wire.MatchSetsRequest(sets=[[wire.MatchRequest(m.account_id.bytes, m.list_id.bytes, version, q.tobytes(), limit=10)
                                            for m in ms]])

    one: list[float] = []
    many: list[float] = []
    serial: list[float] = []  # the same lists as separate requests, one after another
    for p in range(repeat):
        for ms, out in (([first], one), (matrices, many)):
            t = time.perf_counter()
            await router.match_sets(sets(probes[p], ms))
            out.append(time.perf_counter() - t)
        t = time.perf_counter()
        for m in matrices:
            await router.match_sets(sets(probes[p], [m]))
        serial.append(time.perf_counter() - t)
    resp = await router.match_sets(sets(probes[0], matrices))
    got = resp.sets[0].results[0]
    # truth: numpy over the union of the lists, each face with its list's face id
    scores = np.concatenate([m.vectors[: m.n] @ probes[0] for m in matrices])
    ids = np.concatenate([m.ids[: m.n] for m in matrices])
    best = np.argsort(-scores, kind="stable")[:10]
    want_ids = ids[best].tobytes()
    want_sims = np.clip(scores[best], 0, 1)
    executor.shutdown()
    got_sims = np.frombuffer(got.similarities, np.float32)
    return {"lists": lists, "faces_per_list": first.n, "ms": _median_ms(many), "one_list_ms": _median_ms(one),
            "serial_ms": _median_ms(serial), "ratio_to_one_list": _median_ms(many) / _median_ms(one),
            "exact": bool(got.face_ids == want_ids and len(got_sims) == 10 and np.allclose(got_sims, want_sims, atol=1e-5))}


def markdown(record: dict[str, object], command: str) -> str:
    rows: list[dict[str, object]] = record["rows"]  # type: ignore[assignment]
    multi: dict[str, object] = record["multi"]  # type: ignore[assignment]
    lines = [
        f"## Filtered brute-force matching: {record['size']:,} × {record['dim']}",
        "",
        f"Machine: {machine_line(record['machine'])}.  ",  # type: ignore[arg-type]
        f"Command: `{command}`  ",
        (f"One reference, top 10, in process through the brute-force Matcher's search (`batching.run_search`: filter mask, "
         f"top-k over the kept rows gathered in cache-sized blocks, similarity mapping); medians of {record['repeat']} "
         f"interleaved passes. Unfiltered scan of the same list in the same run: **{record['unfiltered_ms']:.1f} ms**."),
        "",
        "| filter | faces kept | ms per request | of which the mask (ms) | vs unfiltered | top-10 = numpy |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['filter']} | {r['kept']:,} | {r['ms']:.1f} | {r['select_ms']:.1f} | "
                     f"{r['ratio_to_unfiltered']:.2f}× | {'yes' if r['exact'] else 'NO'} |")
    lines += [
        "",
        (f"One candidate set over {multi['lists']} lists of {multi['faces_per_list']:,} faces each, through the proxy's "
         f"`Router.match_sets` (sub-requests sent side by side as the proxy sends them, scanned by the brute-force "
         f"Matcher's scheduler, which runs large scans one at a time, then merged exactly): "
         f"**{multi['ms']:.1f} ms** per request, against **{multi['one_list_ms']:.1f} ms** for one such list "
         f"({multi['ratio_to_one_list']:.2f}×) and **{multi.get('serial_ms', float('nan')):.1f} ms** for the same lists asked "
         f"one after another; merged top-10 (face ids and similarities) = numpy over the union of the lists: "
         f"{'yes' if multi['exact'] else 'NO'}. Each list has faces of its own ({multi['lists']} matrices in memory)."),
    ]
    return "\n".join(lines)


def main(size: int, dim: int, repeat: int, lists: int, seed: int, log: Callable[[str], None] = print) -> dict[str, object]:
    return asyncio.run(run(size, dim, repeat, lists, seed, log))
