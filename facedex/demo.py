"""The demo of ``facedex up --demo``: a list of 10k synthetic faces, matched over the public API."""

from __future__ import annotations

import time
import uuid

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from facedex.api.models import MatchResponseOut
from facedex.bench.datasets import face_like
from facedex.client import Client

console = Console()


def run_demo(api_url: str, admin_token: str, n_faces: int = 10_000, n_probes: int = 5) -> bool:
    """Returns True when every probe's best match is one of its planted mates."""
    with Client(api_url, admin_token) as admin:
        token = admin.create_account("demo").token
    with Client(api_url, token) as fx:
        return _demo(fx, n_faces, n_probes)


def _demo(fx: Client, n_faces: int, n_probes: int) -> bool:
    list_id = fx.create_list("demo").list_id
    data = face_like(n_faces, faces_per_identity=4, n_probes=n_probes, seed=7)
    names: dict[uuid.UUID, str] = {}
    with Progress(console=console) as bar:
        task = bar.add_task(f"creating {n_faces} faces in list {list_id}", total=n_faces)
        for start in range(0, n_faces, 1000):
            rows = range(start, min(start + 1000, n_faces))
            external = [f"person-{data.labels[i]}" for i in rows]
            created = fx.create_faces([data.gallery[i] for i in rows], version=1, external_ids=external, list_ids=[list_id])
            names.update(zip(created.face_ids, external))
            bar.advance(task, len(external))

    def match(probe: np.ndarray) -> tuple[MatchResponseOut, float]:
        started = time.perf_counter()
        resp = fx.match(list_id, descriptors=[probe], version=1, limit=3, threshold=0.3)
        return resp, (time.perf_counter() - started) * 1000

    table = Table(title=f"1:N matching of {n_probes} new photos (probes) against {n_faces} faces")
    for column in ("probe of", "rank", "match", "similarity", "mate?", "route", "ms"):
        table.add_column(column)
    all_ok = True
    first_top = None
    for q in range(n_probes):
        truth = f"person-{data.probe_labels[q]}"
        resp, ms = match(data.probes[q])
        results = resp.matches[0].results
        all_ok &= bool(results) and names[results[0].face_id] == truth
        first_top = first_top or (results[0].face_id if results else None)
        for rank, r in enumerate(results, 1):
            mate = names[r.face_id] == truth
            table.add_row(
                truth if rank == 1 else "", str(rank), names[r.face_id], f"{r.similarity:.3f}",
                "yes" if mate else "no", resp.route if rank == 1 else "", f"{ms:.1f}" if rank == 1 else "",
            )
    console.print(table)
    if first_top is not None:
        fx.detach(list_id, [first_top])
        resp, _ = match(data.probes[0])
        gone = all(r.face_id != first_top for r in resp.matches[0].results)
        all_ok &= gone
        console.print(f"detached the first probe's best match ({first_top}): it is {'no longer' if gone else 'STILL'} returned")
    console.print("[green]demo ok[/]" if all_ok else "[red]demo: a probe's best match was not its mate[/]")
    return all_ok
