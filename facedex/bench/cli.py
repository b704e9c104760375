"""``facedex bench ...`` commands: each prints a table, saves a JSON record, and can update docs/benchmarks.md."""

from __future__ import annotations

import functools
import importlib
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.markdown import Markdown

from facedex.bench.common import save_record, write_section

app = typer.Typer(help="Benchmarks; tables go to docs/benchmarks.md (--doc), raw records to bench-results/.", no_args_is_help=True)
console = Console()

Doc = Annotated[Path | None, typer.Option(help="Update this Markdown file's section for the benchmark.")]


# Libraries of the `bench` extra: a runtime install (`pip install facedex`) has none of them.
BENCH_EXTRA = {"aiohttp", "psutil", "hnswlib", "matplotlib", "skimage"}


def _needs_bench_extra(fn: Callable[..., object]) -> Callable[..., object]:
    """Check the bench libraries first (arms run in child processes, where a missing one is only a dead child) and
    turn a missing one into a message naming the extra."""

    @functools.wraps(fn)
    def run(*args: object, **kwargs: object) -> object:
        try:
            for name in sorted(BENCH_EXTRA):
                importlib.import_module(name)
            return fn(*args, **kwargs)
        except ModuleNotFoundError as exc:
            if (exc.name or "").split(".")[0] not in BENCH_EXTRA:
                raise
            console.print(f"{exc.name} is missing: benchmarks need the bench extra: pip install 'facedex[bench]' "
                          "(from a clone: pip install -e '.[bench]')", style="red", markup=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return run


def _command() -> str:
    return "facedex " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _publish(name: str, record: dict[str, object], text: str, doc: Path | None, section: str | None = None) -> None:
    """Save the JSON record, print the table, and replace the section of ``doc`` when asked."""
    path = save_record(name, record)
    console.print(Markdown(text))
    console.print(f"record: {path}")
    if doc is not None:
        write_section(doc, section or name, text)
        console.print(f"updated {doc}")


@app.command()
def bruteforce(
    sizes: Annotated[str, typer.Option(help="Comma-separated list sizes.")] = "100000,1000000",
    dim: Annotated[int, typer.Option(help="Descriptor dimension (version 1 is 512).")] = 512,
    repeat: Annotated[int, typer.Option(help="Single-reference runs per size (median reported).")] = 50,
    batch: Annotated[int, typer.Option(help="References per batched request.")] = 64,
    seed: int = 0,
    data: Annotated[str, typer.Option(help="Data regime: face-like, manifold, subspace or uniform (see bench index).")] = "face-like",
    doc: Doc = None,
) -> None:
    """Bulk import rate and exact matching vs plain numpy and the memory-bandwidth bound (real PostgreSQL)."""
    from facedex.bench import bruteforce as bf
    from facedex.bench.regimes import DATA
    from facedex.cli import _database_url

    if data not in DATA:
        raise typer.BadParameter(f"--data must be one of {', '.join(DATA)}")
    record = bf.main(_database_url(), [int(s) for s in sizes.split(",")], dim, repeat, batch, seed, data)
    _publish("bruteforce", record, bf.markdown(record, _command()), doc)


@app.command()
def index(
    sizes: Annotated[str, typer.Option(help="Comma-separated list sizes.")] = "100000,1000000",
    dim: int = 512,
    probes: Annotated[int, typer.Option(help="Planted probes (queries).")] = 1000,
    efs: Annotated[str, typer.Option(help="Search ef values to sweep.")] = "32,64,128,256",
    arms: Annotated[
        str | None,
        typer.Option(help="lib:precision:M:efC[:sweep/sweep],... (libs: facedex, usearch-raw, faiss-hnsw, hnswlib, pgvector; "
                     "flat code scans with exact re-score, precision = re-score store f16/f32, sweep = R: faiss-binary "
                     "(M = 0: sign bits, M > 0: M random-projection bits), faiss-pqfs (M 4-bit codes), faiss-rabitq; "
                     "milvus-lite: milvus-flat, milvus-ivf (M = nlist, sweep = nprobe), milvus-hnsw) and our engine's "
                     "ours:<kind>[:key=value+...][:sweep/...] (kind hnsw: precision, m, efc); "
                     "default: facedex at the index settings, and each peer at the same M and efC."),
    ] = None,
    threshold: float = 0.3,
    seed: int = 0,
    repeat: Annotated[int, typer.Option(help="Passes over the probes per ef (median QPS reported).")] = 3,
    data: Annotated[str, typer.Option(help="face-like (isotropic identity clusters), manifold or subspace (structured "
                                           "generators, facedex/bench/faces_model.py), or uniform (the hard case).")] = "face-like",
    doc: Doc = None,
    section: Annotated[str, typer.Option(help="Name of the section of --doc to replace.")] = "index",
    from_record: Annotated[
        Path | None, typer.Option(help="Render this saved JSON record (e.g. a run's checkpoint) instead of running.")
    ] = None,
) -> None:
    """Build time, memory, load time, quality and QPS of our index and its peers on the same data.

    The record so far is saved after each arm to bench-results/checkpoints/index-<section>.json;
    ``--from-record`` renders such a file (or any saved record) into --doc.
    """
    from facedex.bench import index as bi
    from facedex.config import get_settings

    if data not in bi.DATASETS:
        raise typer.BadParameter(f"--data must be one of {', '.join(bi.DATASETS)}")
    if from_record is not None:
        record = orjson.loads(from_record.read_bytes())
    else:
        s = get_settings().index
        spec = arms or ",".join(
            f"{lib}:{s.precision}:{s.connectivity}:{s.expansion_add}" for lib in ("facedex", "usearch-raw", "faiss-hnsw", "hnswlib")
        )
        checkpoint = Path("bench-results") / "checkpoints" / f"index-{section}.json"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        record = bi.run([int(x) for x in sizes.split(",")], dim, probes, [int(e) for e in efs.split(",")], bi.parse_arms(spec),
                        threshold, seed, checkpoint=lambda r: checkpoint.write_bytes(
                            orjson.dumps({**r, "command": _command()}, option=orjson.OPT_INDENT_2)), repeat=repeat, data=data)
        record["command"] = _command()
    png = None
    if doc is not None:
        png_path = doc.parent / "img" / f"{section}-recall-qps.png"
        png = f"img/{png_path.name}" if bi.plot(record, png_path) else None
    _publish("index", record, bi.markdown(record, str(record["command"]), png), doc, section)


@app.command()
def e2e(
    admin_token: Annotated[str | None, typer.Option(envvar="FACEDEX_ADMIN_TOKEN", help="Admin token of the running platform.")] = None,
    size: Annotated[int, typer.Option(help="Faces in the list.")] = 100_000,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrency levels.")] = "1,8,32",
    requests: Annotated[int, typer.Option(help="Requests per level and route.")] = 500,
    api: Annotated[str | None, typer.Option(help="API URL (default from settings).")] = None,
    manager: Annotated[str | None, typer.Option(help="Index Manager URL (default from settings).")] = None,
    seed: int = 0,
    own_platform: Annotated[
        bool, typer.Option(help="Start a throwaway licensed platform (temp data, own database and ports) for the run.")
    ] = False,
    data: Annotated[str, typer.Option(help="Data regime: face-like, manifold, subspace or uniform (see bench index).")] = "face-like",
    milvus: Annotated[str, typer.Option(help="milvus-lite comparison arm on the same faces: hnsw, ivf, flat or none.")] = "hnsw",
    milvus_m: Annotated[int, typer.Option(help="milvus-lite HNSW M (or IVF nlist).")] = 24,
    milvus_efc: Annotated[int, typer.Option(help="milvus-lite HNSW efConstruction.")] = 96,
    milvus_ef: Annotated[int, typer.Option(help="milvus-lite search ef (HNSW) or nprobe (IVF).")] = 128,
    milvus_requests: Annotated[int | None, typer.Option(
        help="Requests per level for the milvus-lite arm (default: --requests); at 1M it answers 1-2 per second.")] = None,
    doc: Doc = None,
    section: Annotated[str, typer.Option(help="Name of the section of --doc to replace.")] = "e2e",
    msgpack: Annotated[bool, typer.Option("--msgpack/--json", help="Match bodies in application/msgpack instead of JSON.")] = False,
) -> None:
    """Matching over HTTP on a running platform: latency, throughput, route and recall, indexed and exact; then milvus-lite.

    A milvus-lite arm that cannot run is reported in the table and makes the command exit 1 (the rest is published).
    """
    from facedex.bench import e2e as be
    from facedex.bench.regimes import DATA
    from facedex.config import get_settings

    if data not in DATA:
        raise typer.BadParameter(f"--data must be one of {', '.join(DATA)}")
    if milvus not in ("hnsw", "ivf", "flat", "none"):
        raise typer.BadParameter("--milvus must be hnsw, ivf, flat or none")
    levels = [int(c) for c in concurrency.split(",")]
    arm = dict(data=data, milvus=None if milvus == "none" else milvus, milvus_m=milvus_m, milvus_efc=milvus_efc,
               milvus_knob=milvus_ef, milvus_requests=milvus_requests, log=console.print, msgpack=msgpack)
    if own_platform:
        from facedex.bench.platform import own_platform as start

        with start(log=console.print) as p:
            record = be.main(p.api, p.manager, p.admin_token, size, levels, requests, seed, platform_pid=p.pid, **arm)  # type: ignore[arg-type]
    else:
        if not admin_token:
            raise typer.BadParameter("give --admin-token (or FACEDEX_ADMIN_TOKEN), or use --own-platform")
        settings = get_settings()
        record = be.main(api or settings.api.url, manager or settings.manager.url, admin_token, size, levels, requests, seed,
                         **arm)  # type: ignore[arg-type]
    _publish("e2e", record, be.markdown(record, _command()), doc, section)
    if (record.get("milvus") or {}).get("error"):  # type: ignore[union-attr]
        console.print(f"[red]{record['milvus']['error']}[/red]")  # type: ignore[index]
        raise typer.Exit(1)


@app.command()
def extract(
    repeat: Annotated[int, typer.Option(help="Runs per image and stage (median reported).")] = 20,
    total: Annotated[int, typer.Option(help="Images per throughput measurement.")] = 200,
    doc: Doc = None,
) -> None:
    """Photos -> descriptors: time per image and per face, images/s with one and two workers."""
    from facedex.bench import extract as bx

    record = bx.run(repeat, total)
    _publish("extract", record, bx.markdown(record, _command()), doc)


@app.command()
def scale(
    size: Annotated[int, typer.Option(help="Faces in the list.")] = 10_000_000,
    dim: int = 512,
    kind: Annotated[str, typer.Option(help="Index kind (facedex.index.registry), as the 1M calibration chose it.")] = "pq_fastscan",
    params: Annotated[str, typer.Option(help="The kind's build parameters, JSON.")] = '{"m": 64}',
    rescore: Annotated[int, typer.Option(help="Candidates re-scored exactly (R), as calibration chose it.")] = 64,
    probes: int = 200,
    repeat: int = 3,
    seed: int = 0,
    doc: Doc = None,
) -> None:
    """Single-query latency of one index kind at 10M x 512 (codes only in memory; re-score measured on 1M, added)."""
    from facedex.bench import scale as bs

    record = bs.run(size, dim, kind, orjson.loads(params), rescore, probes, repeat, seed, log=console.print)
    record["command"] = _command()
    _publish("scale", record, bs.markdown(record, _command()), doc)


@app.command()
def filters(
    size: Annotated[int, typer.Option(help="Faces in the cached list (and in each list of the multi-list request).")] = 1_000_000,
    dim: Annotated[int, typer.Option(help="Descriptor dimension (a known version's: 512 or 128).")] = 512,
    repeat: Annotated[int, typer.Option(help="Interleaved passes (one request per arm each; medians reported).")] = 30,
    lists: Annotated[int, typer.Option(help="Lists in the multi-list candidate set.")] = 3,
    seed: int = 0,
    doc: Doc = None,
) -> None:
    """Filtered brute-force matching (1 %, 10 %, 50 % kept) against an unfiltered scan, and a request over several lists."""
    from facedex.bench import filters as bf

    record = bf.main(size, dim, repeat, lists, seed, log=console.print)
    record["command"] = _command()
    _publish("filters", record, bf.markdown(record, _command()), doc)


INDEX_PARAM_ARMS = "facedex:f16:32:128,facedex:f16:32:64,facedex:i8:32:64,facedex:i8:24:96,facedex:i8:16:128"
# issue 11's library baselines: flat code scans re-scored from fp16 (R swept), and milvus-lite as a server would be
R_SWEEP = "16/64/256"
SCAN_ARMS_512 = ",".join(f"{arm}:{R_SWEEP}" for arm in (
    "faiss-binary:f16:0:0", "faiss-pqfs:f16:64:0", "faiss-pqfs:f16:128:0", "faiss-rabitq:f16:0:0"))
SCAN_ARMS_128 = ",".join(f"{arm}:{R_SWEEP}" for arm in (
    "faiss-binary:f16:0:0", "faiss-binary:f16:512:0", "faiss-pqfs:f16:32:0", "faiss-pqfs:f16:64:0", "faiss-rabitq:f16:0:0"))
MILVUS_ARMS = "milvus-flat:f32:0:0:1,milvus-ivf:f32:1024:0:16/64/256,milvus-hnsw:f32:24:96:64/256"
# the Indexer's own choice (R = 0: its calibrated R) and the best HNSW peer (faiss: at 1M it matched or beat hnswlib
# and usearch at every ef, docs/benchmarks.md index-1m) swept up to the ef where it reaches the choice's top-1
ENGINE_ARMS = "ours:chosen::0,faiss-hnsw:f32:24:96:256/1024/2048/4096"


@app.command("all")
def all_(
    doc: Doc = Path("docs/benchmarks.md"),
    e2e_runs: Annotated[bool, typer.Option("--e2e/--no-e2e", help="Include the end-to-end runs (own platform each).")] = True,
    only: Annotated[
        str | None, typer.Option("--sections", help="Run only these sections (comma-separated names), e.g. to finish a cut-short run.")
    ] = None,
) -> None:
    """Every benchmark at full size, regenerating each section of --doc (2-4 hours on 2 cores, by the VM's speed).

    A section that fails is reported and the run goes on with the next one (its old section stays in --doc);
    the exit code says whether every section ran.
    """
    from facedex.config import get_settings

    s = get_settings().index
    default = f"{s.precision}:{s.connectivity}:{s.expansion_add}"
    peers = ",".join(f"{lib}:{default}" for lib in ("facedex", "usearch-raw", "faiss-hnsw", "hnswlib", "pgvector"))
    peers_128 = ",".join(f"{lib}:{default}" for lib in ("facedex", "faiss-hnsw", "hnswlib", "pgvector"))
    # uniform: our default and our f32 (quantisation vs graph: near-tied top 10s), and the f32 peers
    peers_uniform = f"facedex:{default},facedex:f32:{s.connectivity}:{s.expansion_add}," + ",".join(
        f"{lib}:{default}" for lib in ("faiss-hnsw", "hnswlib"))
    # at 1M our index also sweeps the high ef its calibration picks there; the peers stop at 256
    peers_1m = f"facedex:{default}:64/128/256/512/1024/2048/4096," + ",".join(f"{lib}:{default}" for lib in ("faiss-hnsw", "hnswlib"))

    def index_section(section: str, arms: str, sizes: str = "100000", dim: int = 512, efs: str = "32,64,128,256",
                   data: str = "face-like") -> Callable[[], None]:
        """One `bench index` section with the suite's fixed probes, threshold, seed and passes."""
        return lambda: index(sizes=sizes, dim=dim, probes=1000, efs=efs, arms=arms, threshold=0.3, seed=0, repeat=3, data=data,
                             doc=doc, section=section)

    sections: list[tuple[str, Callable[[], None]]] = [
        ("bruteforce", lambda: bruteforce(sizes="100000,1000000", dim=512, repeat=50, batch=64, seed=0, doc=doc)),
        ("filters", lambda: filters(size=1_000_000, dim=512, repeat=30, lists=3, seed=0, doc=doc)),
        ("index-params", index_section("index-params", INDEX_PARAM_ARMS)),
        ("index", index_section("index", peers)),
        ("index-128", index_section("index-128", peers_128, dim=128)),
        ("index-uniform", index_section("index-uniform", peers_uniform, efs="32,64,128,256,512", data="uniform")),
        ("index-1m", index_section("index-1m", peers_1m, sizes="1000000", efs="64,128,256")),
        # the structured regimes (facedex/bench/faces_model.py) and the flat code scans, our HNSW beside them
        *[(f"index-scans-{data}", index_section(f"index-scans-{data}", f"facedex:{default},{SCAN_ARMS_512},{MILVUS_ARMS}",
                                                data=data, efs="64,256")) for data in ("face-like", "manifold", "subspace")],
        ("index-scans-128", index_section("index-scans-128", f"facedex:{default},{SCAN_ARMS_128}", dim=128, data="manifold",
                                          efs="64,256")),
        # issue 11's acceptance: what the Indexer chooses at 1M against the best graphs at equal top-1, both regimes
        *[(f"engine-{dim}-{data}", index_section(f"engine-{dim}-{data}", ENGINE_ARMS, sizes="1000000", dim=dim, data=data,
                                                 efs="0")) for dim in (512, 128) for data in ("face-like", "manifold")],
        ("extract", lambda: extract(repeat=20, total=200, doc=doc)),
    ]
    if e2e_runs:
        sections += [
            ("e2e", lambda: e2e(size=100_000, concurrency="1,8,32", requests=500, seed=0, own_platform=True, doc=doc, section="e2e")),
            ("e2e-1m", lambda: e2e(size=1_000_000, concurrency="1,8,32", requests=1000, milvus_requests=200, seed=0,
                                   own_platform=True, doc=doc, section="e2e-1m")),
            ("e2e-10k", lambda: e2e(size=10_000, concurrency="1,8,32", requests=1000, seed=0, own_platform=True, milvus="none",
                                    doc=doc, section="e2e-10k")),
        ]
    if only is not None:
        wanted = [w.strip() for w in only.split(",") if w.strip()]
        unknown = sorted(set(wanted) - {name for name, _ in sections})
        if unknown:
            raise typer.BadParameter(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(name for name, _ in sections)}")
        sections = [(name, run) for name, run in sections if name in wanted]
    failed: list[str] = []
    for name, run in sections:
        started = time.monotonic()
        console.rule(f"bench {name}")
        try:
            run()
        except Exception:  # one broken section must not cost the hours of the others
            console.print_exception()
            failed.append(name)
        console.print(f"bench {name}: {time.monotonic() - started:.0f} s")
    if failed:
        console.print(f"[red]failed sections: {', '.join(failed)}[/red]")
        raise typer.Exit(1)


for _info in app.registered_commands:  # every bench command says which extra to install when a library is missing
    _info.callback = _needs_bench_extra(_info.callback)  # type: ignore[arg-type]
