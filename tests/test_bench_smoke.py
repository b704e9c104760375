"""Tiny runs of the benchmark commands: they work end to end and write their records and sections.

These check plumbing, not speed; real runs are in docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import asyncpg

from facedex.bench.platform import LOCAL_POSTGRES
from facedex.embedded import port_open
from tests.test_cli import facedex


def test_bench_bruteforce_and_index_smoke(database_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "FACEDEX_DATABASE_URL": database_url}
    doc = tmp_path / "bench.md"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # records go to ./bench-results
    try:
        out = facedex("bench", "bruteforce", "--sizes", "2000", "--repeat", "5", "--batch", "4", "--doc", str(doc), env=env)
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


def test_bench_e2e_on_its_own_platform(tmp_path: Path) -> None:
    """`facedex bench e2e --own-platform`: a licensed platform of its own, the indexed route taken, all cleaned up."""
    doc = tmp_path / "bench.md"
    out = facedex("bench", "e2e", "--own-platform", "--size", "3000", "--concurrency", "1,4", "--requests", "20",
                  "--doc", str(doc), "--section", "e2e-smoke", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    table = doc.read_text().split("<!-- bench:e2e-smoke -->")[1]
    rows = [line for line in table.splitlines() if line.startswith("| auto") or line.startswith("| exact")]
    assert len(rows) == 4
    assert all("indexed 20" in r for r in rows if r.startswith("| auto"))  # licensed: the index answered
    assert all("bruteforce 20" in r for r in rows if r.startswith("| exact"))
    assert "calibrated: " in table and "mate recall@10" in table  # the kind the build chose, and how well it did
    record = json.loads(next((tmp_path / "bench-results").glob("e2e-*.json")).read_text())
    assert all(r["mate_recall"] >= 0.95 for r in record["rows"])
    if port_open("127.0.0.1", 5432):  # it used the local server: its database is gone again
        async def leftovers() -> int:
            conn = await asyncpg.connect(LOCAL_POSTGRES + "/postgres")
            try:
                return int(await conn.fetchval("SELECT count(*) FROM pg_database WHERE datname LIKE 'facedex_bench_e2e_%'"))
            finally:
                await conn.close()

        assert asyncio.run(leftovers()) == 0


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
