"""Indexer service: ``POST /1/index_list`` starts a build, ``GET /1/state`` reports it, DELETE cancels.

One build at a time per instance (run more instances for more builds). The
build runs in a child process started with ``spawn``, in a process group of its
own and with a parent-death signal (it dies with the Indexer, even on kill -9);
before it stores the index it checks that its parent is the same and the build
was not cancelled (a flag in shared memory). The service watches it:
exit 0 with a result is success, a signal death (e.g. the OOM killer's
SIGKILL) is 26104, a reported error keeps its code, a cancel is 26106. The
service itself never dies with a build.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import queue
import signal
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from enum import Enum

import orjson
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from facedex import descriptors
from facedex.config import Settings
from facedex.errors import Errors, FacedexError, by_code
from facedex.http import ErrorBody, create_app, errors
from facedex.indexer.build import BuildJob, child_main
from facedex.lifespan import service_lifespan
from facedex.storage.base import IndexMetaOut

log = logging.getLogger(__name__)


class IndexListRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: uuid.UUID
    list_id: uuid.UUID
    index_id: uuid.UUID = Field(..., description="Id the new index is stored under.")
    descriptor_version: int | None = Field(None, ge=1, le=2**31 - 1, description="Default: the deployment's.")


class BuildStatus(str, Enum):
    idle = "idle"
    indexing = "indexing"
    success = "success"
    failed = "failed"
    cancelled = "cancelled"


class BuildStateOut(BaseModel):
    state: BuildStatus
    task_id: str | None = None
    list_id: str | None = None
    index_id: str | None = None
    progress: float = Field(..., description="0 .. 1.")
    error: ErrorBody | None = None
    result: IndexMetaOut | None = Field(None, description="The stored index's meta.json, after a success.")
    start_time: float | None = Field(None, description="Unix time.")
    end_time: float | None = None


@dataclass
class BuildState:
    state: str = "idle"  # idle | indexing | success | failed | cancelled
    task_id: str | None = None
    list_id: str | None = None
    index_id: str | None = None
    progress: float = 0.0
    error: dict[str, object] | None = None
    result: dict[str, object] | None = field(default=None, repr=False)
    start_time: float | None = None
    end_time: float | None = None


class Builder:
    """Owns the child process of the current build and the state the Manager polls."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.ctx = mp.get_context("spawn")
        self.state = BuildState()
        self.proc: mp.process.BaseProcess | None = None
        self.progress = self.ctx.Value("d", 0.0)
        self.cancel_flag = self.ctx.Value("b", 0)
        self.results: mp.Queue = self.ctx.Queue()  # type: ignore[type-arg]
        self._cancelled = False
        self._watcher: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return self.state.state == "indexing"

    def start(self, req: IndexListRequest) -> BuildState:
        if self.busy:
            raise FacedexError(Errors.INDEXER_BUSY, f"building task {self.state.task_id}; one build at a time")
        version = req.descriptor_version or self.settings.default_descriptor_version
        descriptors.get_version(version)
        job = BuildJob(str(req.task_id), str(req.list_id), str(req.index_id), version)
        self.progress.value = 0.0
        self.cancel_flag.value = 0
        self._cancelled = False
        while not self.results.empty():  # nothing of an earlier build may be read as this one's
            self.results.get_nowait()
        self.proc = self.ctx.Process(
            target=child_main,
            args=(self.settings.model_dump_json(), job, self.progress, self.results, self.cancel_flag, os.getpid()),
            name=f"build-{req.list_id}",
            daemon=True,
        )
        self.proc.start()
        self.state = BuildState("indexing", job.task_id, job.list_id, job.index_id, 0.0, start_time=time.time())
        self._watcher = asyncio.get_running_loop().create_task(self._watch(self.proc))
        log.info("build of list %s (task %s) started in pid %s", job.list_id, job.task_id, self.proc.pid)
        return self.state

    def cancel(self, task_id: str) -> BuildState:
        if not self.busy or self.state.task_id != task_id:
            raise FacedexError(Errors.TASK_NOT_FOUND, f"task {task_id} is not being built here")
        self._cancelled = True
        self._kill()
        return self.state

    def _kill(self) -> None:
        """Stop the build now: the flag first (a child between its check and put sees it), then its whole group."""
        self.cancel_flag.value = 1
        proc = self.proc
        if proc is None or proc.pid is None or not proc.is_alive():
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.kill()

    def _result(self) -> tuple | None:  # type: ignore[type-arg]
        try:
            return self.results.get(timeout=1.0)
        except queue.Empty:
            return None

    async def _watch(self, proc: mp.process.BaseProcess) -> None:
        while proc.is_alive():
            self.state.progress = round(self.progress.value, 4)
            await asyncio.sleep(0.1)
        result = await asyncio.to_thread(self._result) if proc.exitcode == 0 else None
        proc.join()
        st = self.state
        st.end_time = time.time()
        if self._cancelled:
            st.state, st.error = "cancelled", _error(Errors.BUILD_CANCELLED.code, "cancelled on request")
        elif result is not None and result[0] == "ok":
            st.state, st.progress = "success", 1.0
            st.result = orjson.loads(result[1])
            if st.result.get("warning"):  # the index is served, but less accurate than the targets ask
                log.warning("task %s: %s", st.task_id, st.result["warning"])
        elif result is not None:
            st.state, st.error = "failed", _error(result[1], result[2])
        elif proc.exitcode is not None and proc.exitcode < 0:
            sig = signal.Signals(-proc.exitcode).name
            hint = " (likely the OOM killer)" if proc.exitcode == -signal.SIGKILL else ""
            st.state, st.error = "failed", _error(Errors.BUILD_DIED.code, f"build process killed by {sig}{hint}")
        else:
            st.state, st.error = "failed", _error(Errors.BUILD_DIED.code, f"build process exited with {proc.exitcode}")
        log.info("build of task %s ended: %s %s", st.task_id, st.state, st.error or "")

    async def stop(self) -> None:
        self._kill()
        if self._watcher is not None:
            await asyncio.wait([self._watcher], timeout=5)


def _error(code: int, detail: str) -> dict[str, object]:
    return {"error_code": code, "desc": by_code(code).desc, "detail": detail}


def build_app(settings: Settings) -> FastAPI:
    builder = Builder(settings)

    @service_lifespan
    async def lifespan(app: FastAPI, stack: AsyncExitStack) -> AsyncIterator[None]:
        stack.push_async_callback(builder.stop)  # a build still running dies with the service
        yield

    app = create_app(
        "indexer", settings,
        title="facedex Indexer",
        description="Builds the index of one list at a time in a child process and stores it.",
        internal=True,
        lifespan=lifespan,
    )

    def out(st: BuildState) -> BuildStateOut:
        return BuildStateOut.model_validate(asdict(st))

    @app.post(
        "/1/index_list", status_code=202, tags=["indexing"], summary="Start building a list's index",
        responses=errors(Errors.DESCRIPTOR_VERSION_UNKNOWN, Errors.INDEXER_BUSY),
    )
    async def index_list(req: IndexListRequest) -> BuildStateOut:
        return out(builder.start(req))

    @app.get("/1/state", tags=["indexing"], summary="The current or last build")
    async def state() -> BuildStateOut:
        if builder.busy:
            builder.state.progress = round(builder.progress.value, 4)
        return out(builder.state)

    @app.delete(
        "/1/index_list/{task_id}", tags=["indexing"], summary="Cancel the running build", responses=errors(Errors.TASK_NOT_FOUND)
    )
    async def cancel(task_id: uuid.UUID) -> BuildStateOut:
        return out(builder.cancel(str(task_id)))

    return app
