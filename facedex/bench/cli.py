"""``facedex bench ...`` commands: each prints a table, saves a JSON record, and can update docs/benchmarks.md."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown

from facedex.bench.common import save_record, write_section

app = typer.Typer(help="Benchmarks; tables go to docs/benchmarks.md (--doc), raw records to bench-results/.", no_args_is_help=True)
console = Console()

Doc = Annotated[Path | None, typer.Option(help="Update this Markdown file's section for the benchmark.")]


def _command() -> str:
    return "facedex " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@app.command()
def bruteforce(
    sizes: Annotated[str, typer.Option(help="Comma-separated list sizes.")] = "100000,1000000",
    dim: Annotated[int, typer.Option(help="Descriptor dimension (version 1 is 512).")] = 512,
    repeat: Annotated[int, typer.Option(help="Single-reference runs per size (median reported).")] = 50,
    batch: Annotated[int, typer.Option(help="References per batched request.")] = 64,
    seed: int = 0,
    doc: Doc = None,
) -> None:
    """Bulk import rate and exact matching vs plain numpy and the memory-bandwidth bound (real PostgreSQL)."""
    from facedex.bench import bruteforce as bf
    from facedex.cli import _database_url

    record = bf.main(_database_url(), [int(s) for s in sizes.split(",")], dim, repeat, batch, seed)
    path = save_record("bruteforce", record)
    text = bf.markdown(record, _command())
    console.print(Markdown(text))
    console.print(f"record: {path}")
    if doc is not None:
        write_section(doc, "bruteforce", text)
        console.print(f"updated {doc}")


@app.command()
def index(
    sizes: Annotated[str, typer.Option(help="Comma-separated list sizes.")] = "100000,1000000",
    dim: int = 512,
    probes: Annotated[int, typer.Option(help="Planted probes (queries).")] = 1000,
    efs: Annotated[str, typer.Option(help="Search ef values to sweep.")] = "32,64,128,256",
    arms: Annotated[
        str | None,
        typer.Option(help="lib:precision:M:efC,... (libs: facedex, usearch-raw, faiss-hnsw, hnswlib); "
                     "default: facedex at the index settings, and each peer at the same M and efC."),
    ] = None,
    threshold: float = 0.3,
    seed: int = 0,
    doc: Doc = None,
    section: Annotated[str, typer.Option(help="Name of the section of --doc to replace.")] = "index",
) -> None:
    """Build time, memory, load time, quality and QPS of our index and its peers on the same data."""
    from facedex.bench import index as bi
    from facedex.config import get_settings

    s = get_settings().index
    spec = arms or ",".join(
        f"{lib}:{s.precision}:{s.connectivity}:{s.expansion_add}" for lib in ("facedex", "usearch-raw", "faiss-hnsw", "hnswlib")
    )
    record = bi.run([int(x) for x in sizes.split(",")], dim, probes, [int(e) for e in efs.split(",")], bi.parse_arms(spec), threshold, seed)
    path = save_record("index", record)
    png = None
    if doc is not None:
        png_path = doc.parent / "img" / f"{section}-recall-qps.png"
        png = f"img/{png_path.name}" if bi.plot(record, png_path) else None
    text = bi.markdown(record, _command(), png)
    console.print(Markdown(text))
    console.print(f"record: {path}")
    if doc is not None:
        write_section(doc, section, text)
        console.print(f"updated {doc}")
