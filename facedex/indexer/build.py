"""The build itself, run in a child process so an OOM kill or a crash cannot take the Indexer down.

Steps: stream the list's descriptors from PostgreSQL (one consistent
snapshot, paged binary COPY, straight into one preallocated float32 matrix),
make its fp16 copy (the re-score vectors), build every candidate index kind
and measure which one this list needs (:mod:`facedex.index.calibrate`), save
the chosen one with the id map and both vector files (each written once), then
put the folder into index storage atomically. Progress (0..1) is shared with
the parent through a ``multiprocessing.Value``; the outcome comes back on a
queue. When no configuration reached the targets the index is still stored
(the most accurate one) with a ``warning`` in its meta.json, which the
Indexer's ``/1/state`` result carries to the task record, and a log warning.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import shutil
import signal
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized

import numpy as np

from facedex import descriptors
from facedex.config import IndexSettings, Settings
from facedex.errors import Errors
from facedex.index import FaceIndex
from facedex.index.calibrate import Choice, calibrate
from facedex.index.registry import candidates
from facedex.storage.base import IndexMeta, open_storage

log = logging.getLogger(__name__)

LOAD_SHARE, CALIBRATE_SHARE = 0.3, 0.6  # progress: loading, building + calibrating, then saving


@dataclass
class BuildJob:
    task_id: str
    list_id: str
    index_id: str
    version: int


async def _load(settings: Settings, job: BuildJob, progress: Synchronized) -> tuple[str, int, np.ndarray, np.ndarray]:
    from facedex.faces.store import FacesStore, create_pool

    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=1)
    try:
        store = FacesStore(pool)
        head = await store.list_head(uuid.UUID(job.list_id))
        if head is None:
            raise BuildError(Errors.LIST_NOT_FOUND.code, f"list {job.list_id} does not exist")
        account_id, _, face_count = head
        spec = descriptors.get_version(job.version)
        ids = np.empty((max(face_count, 1), 16), np.uint8)
        vecs = np.empty((max(face_count, 1), spec.dim), np.float32)
        n, seq = 0, 0
        async for seq, page_ids, page_vecs in store.snapshot(uuid.UUID(job.list_id), job.version):
            if n + len(page_ids) > ids.shape[0]:  # the list grew since face_count was read
                ids = np.concatenate([ids, np.empty_like(ids)])
                vecs = np.concatenate([vecs, np.empty_like(vecs)])
            ids[n : n + len(page_ids)] = page_ids
            vecs[n : n + len(page_ids)] = page_vecs
            n += len(page_ids)
            progress.value = LOAD_SHARE * min(1.0, n / max(face_count, 1))
        return str(account_id), seq, ids[:n], vecs[:n]
    finally:
        await pool.close()


class BuildError(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def choose_index(s: IndexSettings, ids: np.ndarray, vecs: np.ndarray,
                 progress: Callable[[float], None] | None = None) -> tuple[FaceIndex, Choice]:
    """The list's index as a build makes it: every candidate configuration measured, the cheapest accurate one kept.

    Pure (no I/O), so ``facedex bench index``'s ``ours:chosen`` arm measures exactly what the Indexer would serve.
    """
    vecs16 = vecs.astype(np.float16)
    hnsw = {"connectivity": s.connectivity, "expansion_add": s.expansion_add, "precision": s.precision, "threads": s.build_threads}
    configs = candidates(vecs.shape[1], len(vecs), list(s.kinds), hnsw, s.hnsw_max_faces)
    choice, scan = calibrate(vecs, vecs16, configs, s.target_top1, s.target_recall, s.calibration_samples, s.max_rescore,
                             progress=progress)
    return FaceIndex(scan, ids, vecs, vecs16, choice.best.knobs, choice.best.rescore), choice


def build(settings: Settings, job: BuildJob, progress: Synchronized, wanted: Callable[[], bool] = lambda: True) -> IndexMeta:
    """Build and store the index; ``wanted()`` is asked right before the put (a build nobody waits for stores nothing)."""
    started = time.perf_counter()
    account_id, seq, ids, vecs = asyncio.run(_load(settings, job, progress))
    if len(ids) == 0:
        raise BuildError(Errors.LIST_EMPTY.code, f"list {job.list_id} has no faces with version {job.version} descriptors")
    def on_progress(share: float) -> None:
        progress.value = LOAD_SHARE + CALIBRATE_SHARE * share

    index, choice = choose_index(settings.index, ids, vecs, on_progress)
    if choice.warning:
        log.warning("%s: list %s (task %s)", choice.warning, job.list_id, job.task_id)
    work = settings.data_dir / "builds" / job.index_id
    shutil.rmtree(work, ignore_errors=True)
    try:
        index.save(work)
        meta = IndexMeta(
            index_id=job.index_id,
            list_id=job.list_id,
            account_id=account_id,
            descriptor_version=job.version,
            count=len(index),
            change_seq=seq,
            params=index.describe(),
            build_seconds=round(time.perf_counter() - started, 3),
            calibration=choice.as_dict(),
            kind=choice.best.kind,
            warning=choice.warning,
            task_id=job.task_id,
        )
        if not wanted():
            raise BuildError(Errors.BUILD_CANCELLED.code, "the Indexer died or cancelled the build: nothing stored")
        open_storage(settings).put(work, meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress.value = 1.0
    return meta


_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Linux: the kernel SIGKILLs this process when its parent (the Indexer) dies, however it dies.

    Also a process group of its own, so the Indexer can kill the build and anything it started at once.
    Checked after the prctl: a parent that died before it was set is seen as a changed parent pid.
    """
    try:
        os.setpgid(0, 0)
    except OSError:
        pass
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pre-put check below still holds
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def child_main(
    settings_json: str, job: BuildJob, progress: Synchronized, results: Queue, cancelled: Synchronized | None = None,
    parent_pid: int | None = None,
) -> None:
    """Entry point of the build process: reports ("ok", meta) or ("error", code, detail) on ``results``."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    settings = Settings.model_validate_json(settings_json)

    def wanted() -> bool:
        alive = parent_pid is None or os.getppid() == parent_pid
        return alive and not (cancelled is not None and cancelled.value)

    try:
        meta = build(settings, job, progress, wanted)
        results.put(("ok", meta.to_json().decode()))
    except BuildError as exc:
        results.put(("error", exc.code, exc.detail))
    except MemoryError:
        results.put(("error", Errors.BUILD_DIED.code, "out of memory"))
    except Exception as exc:  # anything else is a failed build, reported with its cause
        results.put(("error", Errors.BUILD_FAILED.code, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"))


