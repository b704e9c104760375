"""The supervision mechanism every background loop runs under: restart, stall detection, health."""

from __future__ import annotations

import asyncio

import pytest

from facedex.supervise import Beat, Supervisor


async def _until(cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_failing_round_turns_health_red_then_green_when_it_works_again() -> None:
    broken = True
    rounds = 0

    async def work() -> None:
        nonlocal rounds
        rounds += 1
        if broken:
            raise ConnectionError("redis gone")

    sup = Supervisor("t", backoff_s=0.01, max_backoff_s=0.05)
    sup.every("sync", 0.01, work)
    await sup.start()
    try:
        await _until(lambda: sup.statuses()["sync"]["failures"] >= 3)
        with pytest.raises(RuntimeError, match="sync failing.*redis gone"):
            await sup.check()
        broken = False
        await _until(lambda: sup.statuses()["sync"]["state"] == "ok")
        await sup.check()  # green again
        assert sup.statuses()["sync"]["failures"] == 0
    finally:
        await sup.stop()
    assert sup.statuses()["sync"]["state"] == "stopped"


async def test_forever_loop_is_restarted_after_it_raises_and_resubscribes() -> None:
    lives = 0

    async def consume(beat: Beat) -> None:
        nonlocal lives
        lives += 1  # a real loop would (re)connect and subscribe here
        beat.beat()
        if lives < 3:
            raise OSError("connection reset")
        while True:
            await asyncio.sleep(0.01)
            beat.beat()

    sup = Supervisor("t", backoff_s=0.01, max_backoff_s=0.02)
    sup.forever("consume", consume, stall_s=1.0)
    await sup.start()
    try:
        await _until(lambda: lives == 3 and sup.statuses()["consume"]["state"] == "ok")
        await sup.check()
        assert sup.statuses()["consume"]["restarts"] == 2
    finally:
        await sup.stop()


async def test_stalled_loop_is_cancelled_reported_and_restarted() -> None:
    lives = 0
    hang = asyncio.Event()

    async def listen(beat: Beat) -> None:
        nonlocal lives
        lives += 1
        if lives <= 2:
            await hang.wait()  # a call stuck on a stalled dependency: never returns, never beats
        while True:
            await asyncio.sleep(0.02)
            beat.beat()

    sup = Supervisor("t", backoff_s=0.01, max_backoff_s=0.02)
    sup.forever("listen", listen, stall_s=0.3)
    await sup.start()
    try:
        await _until(lambda: sup.statuses()["listen"]["state"] == "stalled")
        with pytest.raises(RuntimeError, match="listen stalled"):
            await sup.check()
        await _until(lambda: lives == 3 and sup.statuses()["listen"]["state"] == "ok")
        await sup.check()
        assert sup.statuses()["listen"]["restarts"] == 2
    finally:
        await sup.stop()


async def test_round_that_hangs_past_its_timeout_is_a_failure() -> None:
    calls = 0

    async def slow() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(60)

    sup = Supervisor("t", backoff_s=0.01, max_backoff_s=0.02)
    sup.every("plan", 0.01, slow, round_timeout_s=0.2)
    await sup.start()
    try:
        await _until(lambda: sup.statuses()["plan"]["failures"] >= 1)
        assert "TimeoutError" in str(sup.statuses()["plan"]["last_error"])
        await _until(lambda: sup.statuses()["plan"]["state"] == "ok")
    finally:
        await sup.stop()
