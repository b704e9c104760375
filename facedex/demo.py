"""The demo of ``facedex up --demo``: a list of 10k synthetic faces, matched over the public API."""

from __future__ import annotations

import base64
import time

import httpx
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from facedex.bench.datasets import face_like

console = Console()


def _b64(vec: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vec, "<f4").tobytes()).decode()


def run_demo(api_url: str, admin_token: str, n_faces: int = 10_000, n_probes: int = 5) -> bool:
    """Returns True when every probe's best match is one of its planted mates."""
    http = httpx.Client(base_url=api_url, timeout=60)
    token = http.post(
        "/1/accounts", json={"name": "demo"}, headers={"Authorization": f"Bearer {admin_token}"}
    ).raise_for_status().json()["token"]
    http.headers["Authorization"] = f"Bearer {token}"
    list_id = http.post("/1/lists", json={"user_data": "demo"}).raise_for_status().json()["list_id"]
    data = face_like(n_faces, faces_per_identity=4, n_probes=n_probes, seed=7)
    names: dict[str, str] = {}
    with Progress(console=console) as bar:
        task = bar.add_task(f"creating {n_faces} faces in list {list_id}", total=n_faces)
        for start in range(0, n_faces, 1000):
            faces = [
                {"external_id": f"person-{data.labels[i]}", "descriptor": {"version": 1, "data": _b64(data.gallery[i])}}
                for i in range(start, min(start + 1000, n_faces))
            ]
            ids = http.post("/1/faces/batch", json={"faces": faces, "list_ids": [list_id]}).raise_for_status().json()
            names.update(zip(ids["face_ids"], (f["external_id"] for f in faces)))
            bar.advance(task, len(faces))

    def match(probe: np.ndarray) -> tuple[dict, float]:
        started = time.perf_counter()
        body = {
            "references": [{"descriptor": {"version": 1, "data": _b64(probe)}}],
            "candidates": {"list_id": list_id, "limit": 3, "threshold": 0.3},
        }
        resp = http.post("/1/matcher/faces", json=body).raise_for_status().json()
        return resp, (time.perf_counter() - started) * 1000

    table = Table(title=f"1:N matching of {n_probes} new photos (probes) against {n_faces} faces")
    for column in ("probe of", "rank", "match", "similarity", "mate?", "route", "ms"):
        table.add_column(column)
    all_ok = True
    first_top = None
    for q in range(n_probes):
        truth = f"person-{data.probe_labels[q]}"
        resp, ms = match(data.probes[q])
        results = resp["matches"][0]["results"]
        all_ok &= bool(results) and names[results[0]["face_id"]] == truth
        first_top = first_top or (results[0]["face_id"] if results else None)
        for rank, r in enumerate(results, 1):
            mate = names[r["face_id"]] == truth
            table.add_row(
                truth if rank == 1 else "", str(rank), names[r["face_id"]], f"{r['similarity']:.3f}",
                "yes" if mate else "no", resp["route"] if rank == 1 else "", f"{ms:.1f}" if rank == 1 else "",
            )
    console.print(table)
    if first_top is not None:
        http.patch(f"/1/lists/{list_id}/faces", json={"action": "detach", "face_ids": [first_top]}).raise_for_status()
        resp, _ = match(data.probes[0])
        gone = all(r["face_id"] != first_top for r in resp["matches"][0]["results"])
        all_ok &= gone
        console.print(f"detached the first probe's best match: it is {'no longer' if gone else 'STILL'} returned")
    console.print("[green]demo ok[/]" if all_ok else "[red]demo: a probe's best match was not its mate[/]")
    return all_ok
