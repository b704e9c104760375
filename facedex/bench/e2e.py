"""``facedex bench e2e``: the running platform over HTTP, as a client sees it.

Creates an account and a list of face-like descriptors through the API, has
the Index Manager build its index, waits until matching is routed to the
Indexed Matcher, then sends matching requests at each concurrency level, on
the indexed route and on the brute-force route (``candidates.exact``), with a
real HTTP client (aiohttp, keep-alive). Reports latency percentiles,
throughput, the route that answered, and recall@10 and mate recall of the
API's results against exact search on the same data, and the load generator's
own CPU time per level (so one can tell it was not the bottleneck), and the median of each hop of a match
from the answers' ``Server-Timing`` headers (:mod:`facedex.timing`). ``msgpack`` sends and receives
``application/msgpack`` match bodies instead of JSON. With
``milvus`` set, the same faces are then put in milvus-lite and queried at the
same levels (``facedex.bench.milvus_e2e``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from typing import Any

import aiohttp
import msgspec
import numpy as np
import orjson

from facedex import timing
from facedex.bench import hop_floor, milvus_e2e, service_cpu
from facedex.bench.common import machine, machine_line
from facedex.bench.loadgen import LoadClient
from facedex.bench.peers import MilvusUnavailable
from facedex.bench.regimes import make
from facedex.bruteforce.exact import topk
from facedex.lifespan import freeze_startup_objects
from facedex.services import SERVICES

MSGPACK = "application/msgpack"


def _b64(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()


async def _setup(http: aiohttp.ClientSession, api: str, manager: str, admin_token: str, size: int, n_probes: int, seed: int,  # type: ignore[no-untyped-def]
                 data_name: str):
    async with http.post(f"{api}/1/accounts", json={"name": "bench-e2e"}, headers={"Authorization": f"Bearer {admin_token}"}) as r:
        token = (await r.json())["token"]
    auth = {"Authorization": f"Bearer {token}"}
    async with http.post(f"{api}/1/lists", json={"user_data": "bench-e2e"}, headers=auth) as r:
        list_id = (await r.json())["list_id"]
    data = make(data_name, size, 512, n_probes, seed)
    face_ids: list[str] = [""] * size
    sem = asyncio.Semaphore(4)

    async def upload(start: int) -> None:
        async with sem:  # build each body when it is sent: 1M faces of JSON at once would take GBs
            faces = [{"descriptor": {"version": 1, "data": _b64(v)}} for v in data.gallery[start : start + 1000]]
            async with http.post(f"{api}/1/faces/batch", json={"faces": faces, "list_ids": [list_id]}, headers=auth) as r:
                if r.status != 201:
                    raise RuntimeError(f"upload failed: {r.status} {await r.text()}")
                face_ids[start : start + len(faces)] = (await r.json())["face_ids"]

    started = time.perf_counter()
    await asyncio.gather(*(upload(s) for s in range(0, size, 1000)))
    setup = {"upload_s": time.perf_counter() - started}
    operator = {"Authorization": f"Bearer {admin_token}"}  # the Index Manager's routes need a credential too
    async with http.post(f"{manager}/1/tasks", json={"list_id": list_id}, headers=operator) as r:
        task = await r.json()
    while True:
        async with http.get(f"{manager}/1/tasks/{task['task_id']}", headers=operator) as r:
            task = await r.json()
        if task["status"] in ("success", "failed", "cancelled"):
            break
        await asyncio.sleep(1)
    if task["status"] != "success":
        raise RuntimeError(f"index build did not succeed: {task}")
    async with http.get(f"{manager}/1/indexes/relevant", headers=operator) as r:
        meta = next(m for m in await r.json() if m["list_id"] == list_id)
    setup.update(build_s=meta["build_seconds"], kind=f"{meta['kind']} {meta['params']}", calibration=meta.get("calibration"))
    return data, face_ids, list_id, auth, setup


def _body(probe: np.ndarray, list_id: str, exact: bool, msgpack: bool) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one match: JSON, or msgpack (raw float32 reference, 16-byte list id)."""
    if not msgpack:
        body = {"references": [{"descriptor": {"version": 1, "data": _b64(probe)}}],
                "candidates": {"list_id": list_id, "limit": 10, "exact": exact}}
        return orjson.dumps(body), {"Content-Type": "application/json"}
    packed = {"references": [{"descriptor": {"version": 1, "data": np.asarray(probe, "<f4").tobytes()}}],
              "candidates": {"list_id": uuid.UUID(list_id).bytes, "limit": 10, "exact": exact}}
    return msgspec.msgpack.encode(packed), {"Content-Type": MSGPACK, "Accept": MSGPACK}


def _answer(body: bytes, msgpack: bool) -> dict:  # type: ignore[type-arg]
    """A 200 answer's payload, face ids as text either way."""
    if not msgpack:
        return orjson.loads(body)  # type: ignore[no-any-return]
    payload = msgspec.msgpack.decode(body)
    for m in payload["matches"]:
        for res in m["results"]:
            res["face_id"] = str(uuid.UUID(bytes=res["face_id"]))
    return payload  # type: ignore[no-any-return]


def _hop_medians(hops: list[dict[str, float]]) -> dict[str, float]:
    """Median of each hop over the answers that had it (Server-Timing, facedex.timing)."""
    return {h: float(np.median([t[h] for t in hops if h in t])) for h in timing.HOPS if any(h in t for t in hops)}


async def _run_level(client: LoadClient, auth, list_id, probes, exact: bool, concurrency: int, requests: int,  # type: ignore[no-untyped-def]
                     msgpack: bool = False, meter: service_cpu.CpuMeter | None = None):
    latencies: list[float] = []
    routes: dict[str, int] = {}
    fallbacks: dict[str, int] = {}
    results: dict[int, list[str]] = {}
    hops: list[dict[str, float]] = []
    queue = list(range(requests))

    async def worker() -> None:
        while queue:
            i = queue.pop()
            body, headers = _body(probes[i % len(probes)], list_id, exact, msgpack)
            headers.update(auth)
            started = time.perf_counter()
            async with asyncio.timeout(120):
                status, answer_headers, answer = await client.post("/1/matcher/faces", body, headers)
            latencies.append(time.perf_counter() - started)
            if status != 200:  # (an error's body may be empty or not JSON: counted, not read)
                routes["error"] = routes.get("error", 0) + 1
                continue
            payload = _answer(answer, msgpack)
            hops.append(timing.parse_header(answer_headers.get(timing.HEADER.lower(), "")))
            routes[payload["route"]] = routes.get(payload["route"], 0) + 1
            if reason := payload.get("fallback_reason"):  # "indexed: admission", "indexed: TimeoutError", ...
                kind = ":".join(reason.split(":")[:2])
                fallbacks[kind] = fallbacks.get(kind, 0) + 1
            results[i % len(probes)] = [m["face_id"] for m in payload["matches"][0]["results"]]

    if meter is not None:
        meter.start()
    cpu, started = milvus_e2e.cpu_seconds(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    cpu = milvus_e2e.cpu_seconds() - cpu
    lat = np.array(latencies) * 1000
    level = {"concurrency": concurrency, "requests": requests, "p50_ms": float(np.percentile(lat, 50)),
             "p95_ms": float(np.percentile(lat, 95)), "p99_ms": float(np.percentile(lat, 99)),
             "throughput_rps": requests / wall, "routes": routes, "fallbacks": fallbacks, "client_cpu_s": cpu, "client_cpu_share": cpu / wall,
             "hops_ms": _hop_medians(hops)}
    if meter is not None:  # CPU per request of every process on the path (service_cpu), the client's beside it
        services, system = meter.per_request(requests)
        level["cpu_ms"] = {**services, "client": cpu * 1000 / requests}
        level["cpu_system_ms"] = system  # of the services and engines (the client's own split is not kept)
    return level, results


async def run(api: str, manager: str, admin_token: str, size: int, levels: list[int], requests: int, seed: int,
              data_name: str = "face-like", msgpack: bool = False, platform_pid: int | None = None,
              ) -> tuple[dict[str, object], object, np.ndarray, list[set[int]]]:
    """The HTTP arm; returns the record, the dataset, exact top 10s and each probe's mates (for the milvus-lite arm).

    The services' CPU is read from ``/proc`` on this machine: the children of ``platform_pid`` (``facedex up``) if
    given, else every ``facedex serve`` process here."""
    n_probes = 200
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256), timeout=aiohttp.ClientTimeout(total=120)))
        data, face_ids, list_id, auth, setup = await _setup(http, api, manager, admin_token, size, n_probes, seed, data_name)
        print(f"  uploaded {size:,} faces in {setup['upload_s']:.0f} s; index built in {setup['build_s']:.0f} s, "
              f"calibrated: {setup['kind']}", flush=True)
        row_of = {f: i for i, f in enumerate(face_ids)}
        client = await stack.enter_async_context(LoadClient(api))
        exact_s, exact_i = topk(data.probes, data.gallery, 10)
        # wait until the matcher serves the list
        for _ in range(120):
            level, _ = await _run_level(client, auth, list_id, data.probes, False, 1, 1, msgpack)
            if level["routes"].get("indexed"):
                break
            await asyncio.sleep(1)
        rows = []
        freeze_startup_objects()  # the client's own full collections paused every caller (up to 79 ms at 10k faces)
        meter = service_cpu.CpuMeter(platform_pid)
        if not any(g in SERVICES for g in meter.found()):  # not on this machine (or not Linux): no CPU columns
            meter = None
        for exact in (False, True):
            for c in levels:
                await _run_level(client, auth, list_id, data.probes, exact, c, min(requests, 4 * c), msgpack)  # warm up
                level, results = await _run_level(client, auth, list_id, data.probes, exact, c, requests, msgpack, meter)
                recall = np.mean([len({row_of[f] for f in got} & set(exact_i[q].tolist())) / 10 for q, got in results.items()])
                hits = total = 0
                for q, got in results.items():
                    mates = {int(j) for j, s in zip(exact_i[q], exact_s[q]) if s >= 0.3 and data.labels[j] == data.probe_labels[q]}
                    hits += len(mates & {row_of[f] for f in got})
                    total += len(mates)
                top1 = np.mean([bool(got) and row_of[got[0]] == exact_i[q, 0] for q, got in results.items()])
                level.update(route_asked="exact" if exact else "auto", recall_at_10=float(recall), mate_recall=hits / max(total, 1),
                             top1_agreement=float(top1))
                rows.append(level)
                print(f"  {'exact' if exact else 'auto'} c={c}: p50 {level['p50_ms']:.1f} ms, p99 {level['p99_ms']:.1f} ms, "
                      f"{level['throughput_rps']:.0f} req/s, routes {level['routes']}"
                      + (f", fell back: {level['fallbacks']}" if level["fallbacks"] else ""), flush=True)
    record = {"benchmark": "e2e", "machine": machine(), "size": size, "seed": seed, "data": data_name, "setup": setup, "rows": rows,
              "body": "msgpack" if msgpack else "json"}
    mates = [{int(j) for j, s in zip(exact_i[q], exact_s[q]) if s >= 0.3 and data.labels[j] == data.probe_labels[q]}
             for q in range(len(data.probes))]
    return record, data, exact_i, mates


def markdown(record: dict[str, object], command: str) -> str:
    lines = [
        f"## End to end over HTTP, {record['size']:,} faces",
        "",
        f"Machine: {machine_line(record['machine'])}; every service and the client on the same 2 cores.  ",  # type: ignore[arg-type]
        (f"Data: {record['size']:,} {record.get('data', 'face-like')} descriptors (seed {record['seed']}) created through the API, "
         f"indexed by the Index Manager; references are planted probes; limit 10; match bodies in {record.get('body', 'json')}.  "),
        f"Command: `{command}`",
        "",
        *_setup_line(record.get("setup")),  # type: ignore[arg-type]
        "| route asked | concurrency | requests | answered by | p50 (ms) | p95 (ms) | p99 (ms) | throughput (req/s) | top-1 = exact | recall@10 | mate recall | load generator CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    milvus = record.get("milvus") or {}
    for r in [*record["rows"], *milvus.get("rows", [])]:  # type: ignore[union-attr,misc]
        routes = ", ".join(f"{k} {v}" for k, v in sorted(r["routes"].items()))
        if r.get("fallbacks"):  # why the proxy did not answer from the index
            routes += " (" + ", ".join(f"{v} {k}" for k, v in sorted(r["fallbacks"].items())) + ")"
        lines.append(f"| {r['route_asked']} | {r['concurrency']} | {r['requests']} | {routes} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['throughput_rps']:.0f} | {_opt(r.get('top1_agreement'))} | "
                     f"{r['recall_at_10']:.3f} | {_opt(r.get('mate_recall'))} | {_cpu(r)} |")
    lines += _hops_table(record["rows"])  # type: ignore[arg-type]
    lines += _cpu_table(record["rows"], int(record["machine"].get("cores") or 1))  # type: ignore[arg-type,union-attr]
    lines += _floor_line(record)
    lines += ["", "\"auto\" lets the proxy route (indexed when the list's index is loaded and licensed); \"exact\" sets "
              "`candidates.exact` and is answered by the brute-force Matcher. Load generator CPU: the client process's "
              "own user + system CPU seconds over the level, as a share of one core of the wall time (of 2 cores in all); "
              "far below 100 % means the client was not the bottleneck."]
    if milvus.get("error"):
        lines += ["", f"**milvus-lite arm failed**: {milvus['error']}"]
    elif milvus:
        st = milvus["setup"]
        lines += ["", f"milvus-lite (`python -m milvus_lite server`, its own process on the same cores): the same "
                  f"{record['size']:,} faces inserted through pymilvus in {st['insert_s']:.0f} s, {st['index']} index "
                  f"(M {st['m']}, efConstruction {st['efc']}) built and loaded after {st['build_s']:.0f} s in all; search "
                  f"ef/nprobe {st['search_knob']}; queried with `AsyncMilvusClient`, one probe per call; its rows' CPU column "
                  "also gives the server's CPU seconds."]
    return "\n".join(lines)


def _hops_table(rows: list[dict[str, object]]) -> list[str]:
    """Median milliseconds of each hop (the API's Server-Timing header, facedex.timing) beside the end-to-end p50."""
    hops = [h for h in timing.HOPS if any(h in (r.get("hops_ms") or {}) for r in rows)]  # type: ignore[operator]
    if not hops:
        return []
    lines = ["", "Per hop (median ms of each hop over the level's answers, from their `Server-Timing` header; `total` is the "
             "API's handler, the client's p50 adds the HTTP hop from the client):", "",
             "| route asked | concurrency | p50 (ms) | " + " | ".join(hops) + " |", "|---|---|---|" + "---|" * len(hops)]
    for r in rows:
        got: dict[str, float] = r.get("hops_ms") or {}  # type: ignore[assignment]
        cells = " | ".join(f"{got[h]:.2f}" if h in got else "—" for h in hops)
        lines.append(f"| {r['route_asked']} | {r['concurrency']} | {r['p50_ms']:.1f} | {cells} |")
    return lines


CPU_COLUMNS = ("api", "proxy", "matcher", "bruteforce")  # the services a match crosses, in its order


def _cpu_table(rows: list[dict[str, Any]], cores: int) -> list[str]:
    """CPU milliseconds per request of each process (service_cpu): where the machine's time goes, and the ceiling it
    puts on a closed loop's throughput (cores / the sum)."""
    rows = [r for r in rows if r.get("cpu_ms")]
    if not rows:
        return []
    lines = ["", "CPU per request (ms of CPU time per answered request, by process, read from `/proc` over the level; "
             "`other services`: Index Manager, Indexer, Licenses, dashboard; redis and postgres are every such process "
             f"on the machine; `ceiling`: {cores} cores / the sum, the most requests/s this CPU cost allows; `kernel share`: "
             "the services' and engines' system time, of their CPU):", "",
             "| route asked | concurrency | " + " | ".join(CPU_COLUMNS) + " | other services | redis | postgres | client | sum "
             "| ceiling (req/s) | measured (req/s) | kernel share |", "|---|---|" + "---|" * (len(CPU_COLUMNS) + 8)]
    for r in rows:
        got: dict[str, float] = r["cpu_ms"]
        other = sum(v for k, v in got.items() if k in SERVICES and k not in CPU_COLUMNS)
        redis = got.get("redis-server", 0.0) + got.get("valkey-server", 0.0)
        total = sum(got.values())
        cells = [f"{got.get(c, 0.0):.2f}" for c in CPU_COLUMNS] + [f"{other:.2f}", f"{redis:.2f}", f"{got.get('postgres', 0.0):.2f}",
                                                                      f"{got.get('client', 0.0):.2f}", f"**{total:.2f}**"]
        lines.append(f"| {r['route_asked']} | {r['concurrency']} | " + " | ".join(cells)
                     + f" | {cores * 1000 / max(total, 1e-9):.0f} | {r['throughput_rps']:.0f} | {_kernel_share(r)} |")
    return lines


def _kernel_share(r: dict[str, Any]) -> str:
    services = sum(v for k, v in r["cpu_ms"].items() if k != "client")
    return f"{r['cpu_system_ms'] / services:.0%}" if "cpu_system_ms" in r and services > 0 else "—"


def _floor_line(record: dict[str, object]) -> list[str]:
    """The bare-hop floor measured in the same run: one request at a time, how far the brute-force route is above it;
    at each concurrency level, what three bare hops alone get through this machine beside what each route got."""
    floor: dict[str, Any] | None = record.get("floor")  # type: ignore[assignment]
    if not floor:
        return []
    if "error" in floor:
        return ["", f"Floor (`facedex/bench/hop_floor.py`): not measured in this run ({floor['error']})."]
    text = (f"Floor, same machine and run (`facedex/bench/hop_floor.py`: bare uvicorn servers that only forward the body "
            f"over the services' keep-alive connections, the same client): one request at a time, one HTTP hop p50 "
            f"**{floor['1']:.2f} ms**, three chained **{floor['3']:.2f} ms**.")
    rows: list[dict[str, Any]] = record["rows"]  # type: ignore[assignment]
    exact = [r for r in rows if r["route_asked"] == "exact" and r["concurrency"] == 1]
    if exact:
        p50 = float(exact[0]["p50_ms"])
        text += (f" The brute-force route crosses three such hops (client -> API -> proxy -> Matcher): its p50 at "
                 f"concurrency 1, {p50:.1f} ms, is {p50 - floor['3']:.1f} ms above them: facedex's own work in the three "
                 "services, the search and the change-head read.")
    chain: dict[str, dict[str, float]] = (floor.get("levels") or {}).get("3", {})
    if not chain:
        return ["", text]
    lines = ["", text, "", "At each concurrency, the three bare hops alone (same closed loop of callers) beside each route "
             "(p50 / p99 ms, requests/s):", "", "| concurrency | 3 bare hops | auto | exact |", "|---|---|---|---|"]

    def cell(r: dict[str, Any] | None) -> str:
        return "—" if r is None else f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms, {r['throughput_rps']:.0f}/s"

    for c, bare in sorted(chain.items(), key=lambda kv: int(kv[0])):
        by_route = {r["route_asked"]: r for r in rows if r["concurrency"] == int(c)}
        lines.append(f"| {c} | {cell(bare)} | {cell(by_route.get('auto'))} | {cell(by_route.get('exact'))} |")
    return lines


def _opt(value: object) -> str:
    return "—" if value is None else f"{value:.4f}"


def _cpu(r: dict[str, object]) -> str:
    if "client_cpu_share" not in r:
        return "—"
    text = f"{r['client_cpu_share']:.0%} ({r['client_cpu_s']:.2f} s)"
    return text + (f"; server {r['server_cpu_s']:.1f} s" if "server_cpu_s" in r else "")


def _setup_line(setup: dict[str, object] | None) -> list[str]:
    if not setup:
        return []
    cal = setup.get("calibration") or {}
    chosen = f"top-1 {cal.get('top1')}, mate recall@10 {cal.get('recall10')}"
    return [f"Setup: faces uploaded through `POST /1/faces/batch` in {setup['upload_s']:.0f} s; index build (load, encode, "
            f"calibration, store) {setup['build_s']:.0f} s; calibrated: {setup['kind']} ({chosen}).", ""]


def main(api: str, manager: str, admin_token: str, size: int, levels: list[int], requests: int, seed: int,
         data: str = "face-like", milvus: str | None = None, milvus_m: int = 24, milvus_efc: int = 96,
         milvus_knob: int = 128, milvus_requests: int | None = None, log=print,  # type: ignore[no-untyped-def]
         msgpack: bool = False, platform_pid: int | None = None) -> dict[str, object]:
    """The HTTP arm, then (``milvus`` = flat/ivf/hnsw) the milvus-lite arm on the same faces and probes.

    A milvus-lite arm that cannot run leaves its reason in ``record["milvus"]["error"]``; the HTTP rows stand.
    """
    record, ds, exact_i, mates = asyncio.run(run(api, manager, admin_token, size, levels, requests, seed, data, msgpack,
                                                 platform_pid))
    try:  # a failed floor must not cost the run it sits beside
        record["floor"] = hop_floor.measure(requests=min(requests, 2000), levels=tuple(levels))
        log(f"  bare HTTP hops on this machine: p50 {record['floor']['1']:.2f} ms for one, {record['floor']['3']:.2f} ms for three chained")
    except Exception as e:  # noqa: BLE001
        record["floor"] = {"error": f"{type(e).__name__}: {e}"}
        log(f"  the hop floor could not be measured: {record['floor']['error']}")
    if milvus is not None:
        try:
            record["milvus"] = milvus_e2e.run(ds.gallery, ds.probes, exact_i, mates, levels, milvus_requests or requests, milvus,  # type: ignore[attr-defined]
                                              milvus_m, milvus_efc, milvus_knob, log=log)
        except MilvusUnavailable as e:
            record["milvus"] = {"error": str(e)}
            log(str(e))
    return record
