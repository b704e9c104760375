"""Supervised background loops: every loop of every service runs under this one mechanism.

Why: a loop that ends on its first unexpected error (a Redis restart, a PostgreSQL
stall) silently takes a route down while ``/healthcheck`` stays green. Here a loop
that raises is restarted with jittered exponential backoff, every failure is logged
with its cause, a loop that stops making progress (no :meth:`Beat.beat` for
``stall_s``) is cancelled and restarted like a failed one, and each loop's state is
part of the service's health: red while it cannot work, green again after its next
good round.

Two shapes cover every loop:

- :meth:`Supervisor.every`: a round function run every ``period_s`` (label renewal,
  reload, planning). A round that raises or outlasts ``round_timeout_s`` is a failure;
  the next round comes after the backoff instead of the period.
- :meth:`Supervisor.forever`: a long-running coroutine (a stream consumer, a pub/sub
  listener) that calls ``beat()`` whenever it has done a unit of work or an idle wait
  (e.g. after each blocking XREADGROUP returns). If it raises or returns, or its beats
  stop for ``stall_s``, it is restarted after the backoff; it should set up its own
  connections and subscriptions at its start, so a restart re-subscribes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

from facedex.metrics import LOOP_RESTARTS, LOOP_UP

log = logging.getLogger(__name__)

HEALTHY_LIFE_S = 1.0  # how long a ``forever`` life must run before its beats count as recovery

State = Literal["starting", "ok", "failing", "stalled", "stopped"]


@dataclass
class LoopStatus:
    """What ``/healthcheck`` shows of one loop."""

    name: str
    state: State = "starting"
    failures: int = 0  # consecutive; 0 after a good round
    restarts: int = 0  # in this process's life
    last_error: str | None = None
    last_ok: float | None = None  # unix time of the last good round or beat
    failing_since: float | None = None  # unix time of the first of the current run of failures

    def as_dict(self) -> dict[str, object]:
        return {
            "state": self.state,
            "failures": self.failures,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "last_ok": self.last_ok,
        }


class Beat:
    """Handed to a ``forever`` loop: ``beat()`` says "I am making progress" (cheap; call it often)."""

    def __init__(self, loop: _Loop) -> None:
        self._loop = loop

    def beat(self) -> None:
        now = time.monotonic()
        self._loop.beaten = now
        # a life counts as working (clearing its failures, and so the backoff) only once it has lived a while: one
        # that beats, then fails at once, must back off more each time instead of spinning against a dead dependency
        if now - self._loop.born >= HEALTHY_LIFE_S:
            self._loop.good()


@dataclass
class _Loop:
    status: LoopStatus
    run: Callable[[], Awaitable[None]]  # one life of the loop: returns or raises to be restarted
    stall_s: float | None
    task: asyncio.Task[None] | None = None  # the keeper: runs lives one after another
    life: asyncio.Task[None] | None = None  # the current life
    beaten: float = field(default_factory=time.monotonic)
    born: float = field(default_factory=time.monotonic)  # when the current life started
    supervisor: Supervisor | None = None

    def good(self) -> None:
        st = self.status
        if st.state != "ok":
            if st.failures:
                log.info("loop %s works again after %d failure(s)", st.name, st.failures)
            st.state = "ok"
            LOOP_UP.labels(self.service, st.name).set(1)
        st.failures = 0
        st.failing_since = None
        st.last_ok = time.time()

    def bad(self, state: State, error: str) -> None:
        st = self.status
        st.state = state
        st.failures += 1
        st.last_error = error
        st.failing_since = st.failing_since or time.time()
        LOOP_UP.labels(self.service, st.name).set(0)

    @property
    def service(self) -> str:
        return self.supervisor.service if self.supervisor else ""


class Supervisor:
    """Owns a service's background loops: starts, restarts, watches and stops them."""

    def __init__(self, service: str, *, backoff_s: float = 0.1, max_backoff_s: float = 5.0) -> None:
        self.service = service
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._loops: dict[str, _Loop] = {}
        self._watchdog: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ declaring loops
    def every(
        self,
        name: str,
        period_s: float,
        fn: Callable[[], Awaitable[object]],
        *,
        round_timeout_s: float | None = None,
        run_first: bool = False,
    ) -> None:
        """Run ``fn`` every ``period_s``; a round that raises or outlasts ``round_timeout_s`` counts as a failure."""
        timeout = round_timeout_s if round_timeout_s is not None else max(10.0, 5 * period_s)

        async def run() -> None:
            first = run_first
            while True:
                if not first:
                    await asyncio.sleep(period_s)
                first = False
                async with asyncio.timeout(timeout):
                    await fn()
                loop.good()

        loop = self._add(name, run, stall_s=None)

    def forever(self, name: str, fn: Callable[[Beat], Awaitable[None]], *, stall_s: float | None = 10.0) -> None:
        """Run ``fn(beat)`` for as long as the service runs; restarted if it raises, returns or stops beating."""

        async def run() -> None:
            await fn(Beat(loop))
            raise RuntimeError("loop returned")

        loop = self._add(name, run, stall_s=stall_s)

    def _add(self, name: str, run: Callable[[], Awaitable[None]], stall_s: float | None) -> _Loop:
        if name in self._loops:
            raise ValueError(f"loop {name} is already supervised")
        loop = _Loop(LoopStatus(name), run, stall_s, supervisor=self)
        self._loops[name] = loop
        if self._watchdog is not None:  # added after start(): run it now
            loop.task = asyncio.create_task(self._keep(loop), name=f"{self.service}:{name}")
        return loop

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        for loop in self._loops.values():
            LOOP_UP.labels(self.service, loop.status.name).set(0)
            loop.task = asyncio.create_task(self._keep(loop), name=f"{self.service}:{loop.status.name}")
        self._watchdog = asyncio.create_task(self._watch(), name=f"{self.service}:watchdog")

    async def stop(self) -> None:
        tasks = [t for t in [self._watchdog, *(lp.task for lp in self._loops.values())] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for loop in self._loops.values():
            loop.status.state = "stopped"
        self._watchdog = None

    async def _keep(self, loop: _Loop) -> None:
        """Run one loop's lives one after another, with a backoff between them.

        Each life is a task of its own, so the watchdog can cancel a stalled life without stopping this keeper.
        """
        st = loop.status
        while True:
            loop.beaten = loop.born = time.monotonic()
            loop.life = asyncio.create_task(loop.run(), name=f"{self.service}:{st.name}:life")
            try:
                await loop.life
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # stop(): end the life too
                    loop.life.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await loop.life
                    raise
                # else the watchdog cancelled a stalled life: restart it below
            except Exception as exc:
                loop.bad("failing", f"{type(exc).__name__}: {exc}")
                log.warning("loop %s failed (%d in a row): %s", st.name, st.failures, st.last_error,
                            exc_info=st.failures == 1)
            st.restarts += 1
            LOOP_RESTARTS.labels(self.service, st.name).inc()
            await asyncio.sleep(self._backoff(st.failures))

    def _backoff(self, failures: int) -> float:
        """Exponential in the run of failures, with full jitter so many instances do not retry in step."""
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** max(0, failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _watch(self) -> None:
        """Cancel the life of a ``forever`` loop whose beats stopped (a call hung on a stalled dependency)."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for loop in self._loops.values():
                life = loop.life
                if loop.stall_s is None or life is None or life.done() or life.cancelling():
                    continue
                if now - loop.beaten > loop.stall_s:
                    loop.bad("stalled", f"no progress for {now - loop.beaten:.1f}s")
                    log.warning("loop %s stalled (no progress for %.1fs): restarting it", loop.status.name, now - loop.beaten)
                    life.cancel()

    # ------------------------------------------------------------------- health
    def statuses(self) -> dict[str, dict[str, object]]:
        return {name: loop.status.as_dict() for name, loop in self._loops.items()}

    def failing(self) -> list[LoopStatus]:
        return [lp.status for lp in self._loops.values() if lp.status.state in ("failing", "stalled", "stopped")]

    async def check(self) -> None:
        """A health check (``app.state.health[...]``): raises while any loop cannot do its work."""
        bad = self.failing()
        if bad:
            raise RuntimeError("; ".join(
                f"{st.name} {st.state}" + (f" for {time.time() - st.failing_since:.1f}s" if st.failing_since else "")
                + (f" ({st.last_error})" if st.last_error else "")
                for st in bad
            ))
