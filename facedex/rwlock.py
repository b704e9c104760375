"""An asyncio reader-writer lock: searches share an index, applying list changes takes it alone."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import TypeVar

T = TypeVar("T")


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers so it cannot starve."""

    def __init__(self) -> None:
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer and self._writers_waiting == 0)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        async with self._cond:
            self._writers_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            async with self._cond:
                self._writer = False
                self._cond.notify_all()


async def finish_in_thread(fn: Callable[..., T], *args: object, executor: Executor | None = None) -> T:
    """``fn(*args)`` in a worker thread (of ``executor``, else the default), awaited to its end even if the caller is
    cancelled (then re-raised).

    Why: a cancelled ``await asyncio.to_thread(...)`` returns at once while the thread runs on, so a lock held around
    it would be released under a search or an index change still running (faiss/usearch are not safe for that).
    """
    call = functools.partial(contextvars.copy_context().run, fn, *args)  # the request id stays on its log lines
    future = asyncio.get_running_loop().run_in_executor(executor, call)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait([future])
        raise
