"""Tiny runs of the benchmark commands: they work end to end and write their records and sections.

These check plumbing, not speed; real runs are in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from facedex.bench.platform import LOCAL_POSTGRES
from facedex.embedded import port_open
from tests.test_cli import facedex

MILVUS_INSTALLED = importlib.util.find_spec("milvus_lite") is not None and importlib.util.find_spec("pymilvus") is not None
MILVUS_MISSING = "milvus-lite arm: pymilvus/milvus-lite are not installed here"


def test_bench_bruteforce_and_index_smoke(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "FACEDEX_DATABASE_URL": database_url}
    doc = tmp_path / "bench.md"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # records go to ./bench-results
    try:
        out = facedex("bench", "bruteforce", "--sizes", "2000", "--repeat", "5", "--batch", "4", "--data", "subspace",
                      "--doc", str(doc), env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        out = facedex(
            "bench", "index", "--sizes", "1000", "--probes", "50", "--efs", "32,64",
            "--arms", "facedex:i8:16:32:32/64/128,faiss-hnsw:f32:16:32", "--doc", str(doc), env=env,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        # the checkpoint a long run leaves behind renders into its own section
        checkpoint = tmp_path / "bench-results" / "checkpoints" / "index-index.json"
        out = facedex("bench", "index", "--from-record", str(checkpoint), "--section", "from-checkpoint", "--doc", str(doc), env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        out = facedex("bench", "extract", "--repeat", "2", "--total", "8", "--doc", str(doc), env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        out = facedex("bench", "index", "--data", "uniform", "--sizes", "1000", "--probes", "20", "--efs", "16,200",
                      "--arms", "facedex:f32:16:32", "--doc", str(doc), "--section", "uniform", env=env)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        os.chdir(cwd)
    text = doc.read_text()
    assert "<!-- bench:bruteforce -->" in text and "<!-- bench:index -->" in text
    assert "| 2,000 × 512 |" in text and "| facedex | 1,000 | i8 | 16 | 32 |" in text
    assert "Data: subspace: structured identities in 4 correlated groups" in text.split("<!-- bench:bruteforce -->")[1]
    records = sorted((tmp_path / "bench-results").glob("*.json"))
    assert [r.name.split("-")[0] for r in records] == ["bruteforce", "extract", "index", "index", "index"]
    index = json.loads(records[2].read_text())
    # the section rendered from the checkpoint is the run's table, command included
    run_table = text.split("<!-- bench:index -->")[1].split("<!-- /bench:index -->")[0]
    from_checkpoint = text.split("<!-- bench:from-checkpoint -->")[1].split("<!-- /bench:from-checkpoint -->")[0]
    assert run_table.replace("index-recall-qps", "") == from_checkpoint.replace("from-checkpoint-recall-qps", "")
    assert "| **median** |" in text.split("<!-- bench:extract -->")[1]
    assert {r["lib"] for r in index["rows"]} == {"facedex", "faiss-hnsw"}
    # uniform data has no mates: recall@10 is its measure, and a high ef finds the exact top 10
    uniform_table = text.split("<!-- bench:uniform -->")[1].split("<!-- /bench:uniform -->")[0]
    assert "i.i.d. uniform" in uniform_table and "| 16 | — |" in uniform_table
    uniform = json.loads(records[4].read_text())
    assert uniform["data"] == "uniform" and uniform["rows"][0]["sweeps"][1]["recall_at_10"] >= 0.95
    # an arm's own ef list replaces --efs for that arm only
    assert {r["lib"]: [s["ef"] for s in r["sweeps"]] for r in index["rows"]} == {"facedex": [32, 64, 128], "faiss-hnsw": [32, 64]}
    assert all(0.9 <= s["mate_recall"] <= 1.0 for r in index["rows"] for s in r["sweeps"])


def bench_databases() -> set[str]:
    """The bench platforms' databases on the local server now."""

    async def names() -> set[str]:
        conn = await asyncpg.connect(LOCAL_POSTGRES + "/postgres")
        try:
            return {r[0] for r in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'facedex_bench_e2e_%'")}
        finally:
            await conn.close()

    return asyncio.run(names())


def test_bench_e2e_on_its_own_platform(tmp_path: Path) -> None:
    """`facedex bench e2e --own-platform`: a licensed platform of its own, the indexed route taken, all cleaned up."""
    doc = tmp_path / "bench.md"
    before = bench_databases() if port_open("127.0.0.1", 5432) else None
    out = facedex("bench", "e2e", "--own-platform", "--size", "3000", "--concurrency", "1,4", "--requests", "20",
                  "--doc", str(doc), "--section", "e2e-smoke", cwd=tmp_path)
    table = doc.read_text().split("<!-- bench:e2e-smoke -->")[1]
    assert "| route asked | concurrency | p50 (ms) | parse | refs | proxy |" in table  # hops from Server-Timing
    # the floor: three bare hops at each of the run's levels, beside what each route got at that level
    floor = json.loads(next((tmp_path / "bench-results").glob("e2e-*.json")).read_text())["floor"]
    assert set(floor["levels"]["3"]) == {"1", "4"}, floor
    assert all(0 < v["p50_ms"] <= v["p99_ms"] and v["throughput_rps"] > 0 for v in floor["levels"]["3"].values())
    floor_rows = [line for line in table.split("3 bare hops")[1].splitlines() if line.startswith("| 1 |") or line.startswith("| 4 |")]
    assert len(floor_rows) == 2 and all(row.count(" ms, ") == 3 for row in floor_rows), floor_rows
    # CPU per request of each process on the path: the services the route crosses spent some, the other matcher none
    assert "| route asked | concurrency | api | proxy | matcher | bruteforce |" in table
    cpu = {(r["route_asked"], r["concurrency"]): r["cpu_ms"] for r in json.loads(
        next((tmp_path / "bench-results").glob("e2e-*.json")).read_text())["rows"]}
    assert set(cpu) == {("auto", 1), ("auto", 4), ("exact", 1), ("exact", 4)}, cpu
    assert all({"api", "proxy", "matcher", "bruteforce", "client"} <= set(spent) for spent in cpu.values()), cpu
    for route in ("auto", "exact"):  # 40 requests: CPU time comes in 10 ms ticks, so the big spenders only, summed
        spent = {k: sum(cpu[(route, c)][k] for c in (1, 4)) for k in ("api", "matcher", "bruteforce")}
        searcher, idle = ("matcher", "bruteforce") if route == "auto" else ("bruteforce", "matcher")
        assert spent["api"] > 0 and spent[searcher] > spent[idle], (route, spent)
    if not MILVUS_INSTALLED:  # the HTTP rows are published, the milvus-lite arm's failure is named and fails the command
        assert out.returncode == 1 and "**milvus-lite arm failed**" in table and MILVUS_MISSING in table
        return
    assert out.returncode == 0, out.stdout + out.stderr
    main = table.split("Per hop")[0]  # the latency table (the per-hop table below it has the same first columns)
    rows = [line for line in main.splitlines() if line.startswith("| auto") or line.startswith("| exact")]
    assert len(rows) == 4
    assert all("indexed 20" in r for r in rows if r.startswith("| auto"))  # licensed: the index answered
    assert all("bruteforce 20" in r for r in rows if r.startswith("| exact"))
    assert "calibrated: " in table and "mate recall@10" in table  # the kind the build chose, and how well it did
    record = json.loads(next((tmp_path / "bench-results").glob("e2e-*.json")).read_text())
    assert all(r["mate_recall"] >= 0.95 and r["top1_agreement"] >= 0.95 for r in record["rows"])
    assert all({"parse", "refs", "proxy", "route", "search", "reply", "total"} <= set(r["hops_ms"]) for r in record["rows"])
    assert all("rescore" in r["hops_ms"] for r in record["rows"] if r["route_asked"] == "auto")
    # the load generator's own CPU is reported beside its numbers
    assert all(0 < r["client_cpu_s"] and 0 < r["client_cpu_share"] < 2 for r in record["rows"])
    # the milvus-lite arm: the same faces, the same levels, through pymilvus against its own server process
    milvus = [line for line in table.splitlines() if line.startswith("| milvus-lite HNSW")]
    assert [line.split("|")[2].strip() for line in milvus] == ["1", "4"]
    assert all(r["top1_agreement"] >= 0.95 and r["mate_recall"] >= 0.95 and r["server_cpu_s"] > 0 for r in record["milvus"]["rows"])
    assert record["milvus"]["setup"]["index"] == "HNSW"
    if before is not None:  # it used the local server: its database is gone again (others' runs may have their own)
        assert bench_databases() <= before


def test_a_killed_bench_stops_its_own_platform(tmp_path: Path) -> None:
    """SIGTERM (a plain ``kill``) of `facedex bench e2e --own-platform` mid-run stops the platform it started and
    removes its data, as Ctrl-C does: no orphaned services left running on the machine."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    bench = subprocess.Popen([sys.executable, "-m", "facedex", "bench", "e2e", "--own-platform", "--size", "2000",
                              "--concurrency", "1", "--requests", "1000000", "--milvus", "none"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert bench.stdout is not None
        lines: list[str] = []
        for line in bench.stdout:  # the platform is up and matching
            lines.append(line)
            if "uploaded" in line:
                break
        work = next(line.split(" in ", 1)[1].split()[0] for line in lines if "starting a licensed platform" in line)
        services = psutil.Process(bench.pid).children(recursive=True)
        assert any("serve" in " ".join(p.cmdline()) for p in services), "the platform's services are running"
        time.sleep(1.0)
        bench.send_signal(signal.SIGTERM)
        bench.wait(timeout=90)
    finally:
        if bench.poll() is None:
            bench.kill()
    gone, alive = psutil.wait_procs(services, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    assert not Path(work).exists()


def test_records_in_the_same_second_never_overwrite(tmp_path: Path) -> None:
    from facedex.bench.common import save_record

    paths = [save_record("index", {"n": i}, tmp_path) for i in range(3)]
    assert len(set(paths)) == 3
    assert [json.loads(p.read_text())["n"] for p in paths] == [0, 1, 2]


def test_bench_all_refuses_unknown_sections(tmp_path: Path) -> None:
    out = facedex("bench", "all", "--sections", "index,nope", "--doc", str(tmp_path / "b.md"), cwd=tmp_path)
    assert out.returncode == 2
    assert "unknown section(s) nope" in out.stdout + out.stderr
    assert not (tmp_path / "b.md").exists() and not (tmp_path / "bench-results").exists()  # nothing ran


# --- issue 11: structured generators, code-scan and milvus-lite arms, our engine's arms ---------------------------


def test_structured_generators_measure_like_arcface_class_embeddings() -> None:
    """The generators meet the literature's statistics, measured (not assumed) at a small size.

    Targets: impostor cosine ~0.03 ± 0.07, genuine 0.4-0.8, intrinsic dimension ~10-20 (Gong, Boddeti, Jain,
    CVPR 2019); the isotropic clusters are the contrast (impostors 0 ± 1/sqrt(d), full dimension).
    """
    from facedex.bench.datasets import face_like
    from facedex.bench.faces_model import manifold, measure, subspace

    stats = {name: measure(fn(6000, dim=512, n_probes=300, seed=3), pairs=50_000, id_sample=1500)
             for name, fn in (("manifold", manifold), ("subspace", subspace), ("face-like", face_like))}
    for name in ("manifold", "subspace"):
        imp, gen = stats[name]["impostor"], stats[name]["genuine"]
        assert 0.005 <= imp["mean"] <= 0.06 and 0.05 <= imp["std"] <= 0.095, (name, imp)
        assert 0.4 <= gen["median"] <= 0.8 and gen["q05"] >= 0.35 and gen["q95"] <= 0.9, (name, gen)
        assert imp["q99"] < gen["q05"], name  # mates stand above impostors, as identification needs
    # the manifold is low-dimensional for TwoNN (12-d latent; TwoNN reads it a little high at this sample),
    # though linear PCA needs hundreds of components: the curved structure real embeddings have
    assert 10 <= stats["manifold"]["twonn_dimension"] <= 35
    assert stats["manifold"]["pca_dimension_90"] >= 150
    # the isotropic clusters: impostors at 0 ± 1/sqrt(512), and no low-dimensional structure
    iso = stats["face-like"]
    assert abs(iso["impostor"]["mean"]) < 0.005 and 0.035 <= iso["impostor"]["std"] <= 0.055
    assert iso["twonn_dimension"] > 3 * stats["manifold"]["twonn_dimension"]


def test_arm_specs_name_our_kinds_and_refuse_bad_ones() -> None:
    from facedex.bench.index import parse_arms
    from facedex.bench.ours import build, parse

    assert parse_arms("ours:hnsw:precision=f16+m=16+efc=32:32/64,faiss-pqfs:f16:128:0:16/64,milvus-hnsw:i8:16:32") == [
        ("ours:hnsw:precision=f16+m=16+efc=32", "f16", 16, 32, [32, 64]),
        ("faiss-pqfs", "f16", 128, 0, [16, 64]),
        ("milvus-hnsw", "f32", 16, 32, None),
    ]
    assert parse_arms("ours:hnsw") == [("ours:hnsw", "default", 0, 0, None)]
    assert parse_arms("ours:hnsw::64/128") == [("ours:hnsw", "default", 0, 0, [64, 128])]
    assert parse("ours:hnsw:m=8") == ("hnsw", {"m": "8"})
    for bad in ("ours:", "ours:hnsw:m8", "ours:hnsw:a=1:2:3"):
        with pytest.raises(ValueError):
            parse_arms(bad)
    with pytest.raises(ValueError, match="unknown index kind 'pq'"):
        build("pq", {}, np.zeros((4, 8), np.float32))


def test_bench_index_scans_milvus_and_ours_on_structured_data(tmp_path: Path) -> None:
    """Every new arm at a tiny size on the manifold data: exact re-score finds the exact top-1."""
    doc = tmp_path / "bench.md"
    arms = ("ours:hnsw:m=16+efc=64:64,faiss-binary:f16:0:0:16/64,faiss-binary:f16:512:0:64,faiss-pqfs:f16:64:0:64,"
            "faiss-pqfs:f32:128:0:16/64,faiss-rabitq:f16:0:0:64,milvus-flat:f32:0:0:1,milvus-ivf:f32:16:0:16,"
            "milvus-hnsw:f32:16:64:64")
    # OpenMP threads that spin while waiting make faiss's PQ training 20-60x slower on a shared, loaded box;
    # passive waiting keeps this test fast (correctness only: no number here is a measurement)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    out = facedex("bench", "index", "--sizes", "2000", "--probes", "60", "--data", "manifold", "--repeat", "1",
                  "--arms", arms, "--doc", str(doc), "--section", "scans", cwd=tmp_path, env=env, timeout=600)
    if not MILVUS_INSTALLED:  # CI without milvus-lite: the arm fails loudly, naming what is missing
        assert out.returncode != 0 and MILVUS_MISSING in out.stderr, out.stdout + out.stderr
        return
    assert out.returncode == 0, out.stdout + out.stderr
    record = json.loads(next((tmp_path / "bench-results").glob("index-*.json")).read_text())
    rows = {(r["lib"], r["m"], r["precision"]): r for r in record["rows"]}
    assert len(rows) == 9
    stats = record["data_stats"]["2000"]
    assert 0.4 <= stats["genuine"]["median"] <= 0.8 and stats["impostor"]["std"] < 0.1
    for (lib, m, _), r in rows.items():
        best = r["sweeps"][-1]
        if lib.startswith("faiss-") or lib == "milvus-flat":  # flat scans re-scored exactly / exact search
            assert best["top1_agreement"] >= 0.98 and best["mate_recall"] >= 0.98, (lib, m, best)
        else:
            assert best["top1_agreement"] >= 0.9, (lib, m, best)
    assert rows[("milvus-flat", 0, "f32")]["sweeps"][0]["recall_at_10"] >= 0.99  # FLAT is exact
    assert all(0 < r["insert_s"] <= r["build_s"] for r in record["rows"] if r["lib"].startswith("milvus-"))
    # code and re-score store reported apart: 512 sign bits = 64 B (+ the file's header), 1 KiB of fp16
    binary = rows[("faiss-binary", 0, "f16")]
    assert 64 <= binary["code_bytes"] / 2000 < 70 and binary["rescore_bytes"] / 2000 >= 1024
    assert rows[("faiss-pqfs", 128, "f32")]["rescore_bytes"] / 2000 >= 2048
    text = doc.read_text().split("<!-- bench:scans -->")[1]
    assert "curved manifold" in text and "measured at 2,000: genuine cosine" in text and "TwoNN" in text
    assert "| ours:hnsw:m=16+efc=64 | 2,000 |" in text and "their ef column is R" in text and "milvus-lite" in text


def test_milvus_arm_without_milvus_lite_fails_naming_the_cause(tmp_path: Path) -> None:
    """Where milvus-lite cannot be imported the arm is an error that says so, never a silently missing row."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "pymilvus.py").write_text("raise ImportError('pymilvus blocked by the test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", "")])}
    out = facedex("bench", "index", "--sizes", "500", "--probes", "10", "--repeat", "1", "--arms",
                  "faiss-binary:f16:0:0:16,milvus-flat:f32:0:0:1", "--doc", str(tmp_path / "b.md"), env=env, cwd=tmp_path)
    assert out.returncode != 0
    assert MILVUS_MISSING in out.stderr and "pymilvus blocked by the test" in out.stderr
    assert not (tmp_path / "b.md").exists()  # nothing half-published


def test_bench_filters_smoke(tmp_path: Path) -> None:
    """`bench filters` at a tiny size: every arm runs, answers numpy's top 10, and the section is written."""
    doc = tmp_path / "bench.md"
    out = facedex("bench", "filters", "--size", "20000", "--repeat", "3", "--doc", str(doc), cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    text = doc.read_text().split("<!-- bench:filters -->")[1]
    assert "## Filtered brute-force matching: 20,000 × 512" in text and "| create_time range, 10% | 2,000 |" in text
    assert "| NO |" not in text and "= numpy over the union of the lists: yes" in text
    record = json.loads(next((tmp_path / "bench-results").glob("filters-*.json")).read_text())
    assert [r["kept"] for r in record["rows"]][:6] == [200, 2000, 10000, 200, 2000, 10000] and all(r["exact"] for r in record["rows"])
    assert record["multi"]["exact"] and 0 < record["multi"]["one_list_ms"] < record["multi"]["serial_ms"]
def test_interrupt_stops_a_child_as_ctrl_c_would_and_kills_one_that_ignores_it() -> None:
    import signal
    import subprocess
    import sys
    import time

    from facedex.bench.common import interrupt

    def child(on_sigint: str) -> subprocess.Popen[bytes]:
        code = f"import signal, time; signal.signal(signal.SIGINT, {on_sigint}); print('ready', flush=True); time.sleep(60)"
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"  # its handler is in place
        return proc

    polite, stubborn = child("signal.default_int_handler"), child("signal.SIG_IGN")
    started = time.monotonic()
    interrupt(polite, 10)
    assert polite.returncode == -signal.SIGINT and time.monotonic() - started < 5  # KeyboardInterrupt: it unwound itself
    interrupt(stubborn, 0.5)
    assert stubborn.returncode == -signal.SIGKILL  # killed after the timeout, and reaped
