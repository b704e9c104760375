"""The brute-force Matcher's choice between its fp16 and fp32 scans, made per list from its own searches'
timings (facedex.bruteforce.scans): both are tried, the faster serves, the other is still probed now and then,
and every answer stays exact whichever scan gave it."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest

from facedex.bruteforce import cache, exact, scans
from facedex.bruteforce.cache import ListMatrix
from facedex.bruteforce.scans import PROBE_EVERY, SAMPLES, ScanChoice


def _learn(choice: ScanChoice, refs: int, rows: int, half_s: float, full_s: float) -> list[bool]:
    """Searches until the class has decided, each timed as given; returns which scan each one used."""
    used: list[bool] = []
    while not used or choice.chosen(refs) is None:
        half = choice.use_half(refs, rows)
        used.append(half)
        choice.record(refs, rows, half, half_s if half else full_s)
        assert len(used) <= 2 * SAMPLES, "still learning after both scans had their samples"
    return used


def test_both_scans_are_tried_in_turn_then_the_faster_one_serves() -> None:
    choice = ScanChoice()
    used = _learn(choice, 1, 10_000, half_s=0.002, full_s=0.001)
    assert used.count(True) == used.count(False) == SAMPLES
    assert choice.chosen(1) == "fp32"
    assert not any(choice.use_half(1, 10_000) for _ in range(PROBE_EVERY - 1))
    assert choice.use_half(1, 10_000)  # the probe: the slower scan once in PROBE_EVERY searches
    assert len(_learn(choice, 1, 1_000_000, half_s=0.04, full_s=0.09)) == 2 * SAMPLES  # 100x the rows: learnt anew
    assert choice.chosen(1) == "fp16" and choice.use_half(1, 1_000_000)


def test_each_class_of_reference_count_decides_on_its_own() -> None:
    choice = ScanChoice()
    _learn(choice, 1, 50_000, half_s=0.001, full_s=0.003)
    _learn(choice, 12, 50_000, half_s=0.012, full_s=0.009)
    assert (choice.chosen(1), choice.chosen(12), choice.chosen(9)) == ("fp16", "fp32", "fp32")  # 9 and 12: 8-15
    assert choice.chosen(3) is None  # not yet seen: learning
    assert not choice.use_half(exact.HALF_MAX_QUERIES + 1, 50_000) and choice.chosen(exact.HALF_MAX_QUERIES + 1) == "fp32"


def test_the_choice_follows_a_machine_whose_speed_changed() -> None:
    """The other scan, probed once in PROBE_EVERY searches, makes both be measured afresh once a median of its
    probes says it is faster; the fresh medians then move the choice. The serving scan slowing does the same."""
    choice = ScanChoice()
    _learn(choice, 1, 10_000, half_s=0.002, full_s=0.001)
    probes = 0
    for searches in range(1, (SAMPLES // 2 + 1) * PROBE_EVERY + 1):
        half = choice.use_half(1, 10_000)
        probes += half
        choice.record(1, 10_000, half, 0.0005 if half else 0.001)  # fp16 got faster
        if probes < SAMPLES // 2 + 1:
            assert choice.chosen(1) == "fp32", searches
    assert probes == SAMPLES // 2 + 1 and choice.chosen(1) is None  # measured afresh, in turn
    assert len(_learn(choice, 1, 10_000, half_s=0.0005, full_s=0.001)) == 2 * SAMPLES
    assert choice.chosen(1) == "fp16"
    for _ in range(SAMPLES // 2 + 1):  # and now fp16 slows: its own searches say so
        choice.record(1, 10_000, choice.use_half(1, 10_000), 0.003)
    assert choice.chosen(1) is None
    _learn(choice, 1, 10_000, half_s=0.003, full_s=0.001)
    assert choice.chosen(1) == "fp32"


def test_a_slow_stretch_of_the_serving_scan_does_not_hand_the_list_to_the_slower_one() -> None:
    """A burst of slow searches (the machine, not the scan) compared with the other scan's old probes would flip the
    choice for hundreds of searches; instead both are measured again and the faster one keeps serving."""
    choice = ScanChoice()
    _learn(choice, 1, 10_000, half_s=0.002, full_s=0.001)
    for _ in range(SAMPLES // 2 + 1):
        assert not choice.use_half(1, 10_000)
        choice.record(1, 10_000, False, 0.004)  # fp32's searches in a slow stretch
    used = _learn(choice, 1, 10_000, half_s=0.002, full_s=0.001)  # the stretch is over
    assert used.count(True) == SAMPLES and choice.chosen(1) == "fp32"
    assert not any(choice.use_half(1, 10_000) for _ in range(PROBE_EVERY - 1))


def test_a_small_difference_does_not_move_the_choice() -> None:
    """Within MARGIN the serving scan stays (no relearning on every tie)."""
    choice = ScanChoice()
    _learn(choice, 1, 10_000, half_s=0.00100, full_s=0.00101)
    assert choice.chosen(1) == "fp16"
    for _ in range(10 * PROBE_EVERY):
        half = choice.use_half(1, 10_000)
        choice.record(1, 10_000, half, 0.00100 if half else 0.00095)  # fp32 now 5 % faster
    assert choice.chosen(1) == "fp16"


def test_timings_are_compared_per_reference() -> None:
    """A class holds several reference counts (2 and 3 here): a scan is not judged slower for serving more."""
    choice = ScanChoice()
    for i in range(2 * SAMPLES):
        refs = 2 if i % 2 else 3  # in turn: fp16 gets the threes, fp32 the twos
        half = choice.use_half(refs, 10_000)
        choice.record(refs, 10_000, half, refs * (0.0009 if half else 0.001))
    assert choice.chosen(2) == "fp16"


def test_larger_batches_and_searches_without_a_choice_teach_nothing() -> None:
    """17-31 references share class 16's bit length but always scan fp32; a search that had no choice (a reference
    fp16 cannot hold) is not a sample either: neither moves what 16 references scan."""
    choice = ScanChoice()
    _learn(choice, 16, 10_000, half_s=0.001, full_s=0.002)
    assert choice.chosen(16) == "fp16"
    for _ in range(3 * SAMPLES):
        choice.record(20, 10_000, False, 20 * 0.00001)  # per reference: 6x faster than class 16's fp16 samples
        choice.record(16, 10_000, False, 16 * 0.00001, learn=False)
    assert choice.chosen(16) == "fp16" and choice.use_half(16, 10_000)
    choice.record(0, 10_000, False, 0.001)  # no reference: nothing to divide by, nothing learnt


def test_forced_scans_for_benchmarks() -> None:
    assert ScanChoice(only=True).use_half(1, 10) and ScanChoice(only=True).chosen(1) == "fp16"
    assert not ScanChoice(only=False).use_half(1, 10) and ScanChoice(only=False).chosen(1) == "fp32"


NEEDS_SOUND_FP16 = pytest.mark.skipif(not exact.half_scan_sound(), reason="this CPU's fp16 kernel is outside the "
                                      "bound: lists hold no fp16 copy here (the last test covers that)")


@NEEDS_SOUND_FP16
@pytest.mark.parametrize("slow", ["fp16", "fp32"])
def test_a_list_matrix_settles_on_its_faster_scan_and_stays_exact(monkeypatch: pytest.MonkeyPatch, slow: str) -> None:
    """Through ListMatrix.search: whichever scan is made slow, the list ends up on the other one, and every answer
    along the way (learning, probes, settled) equals the fp32 exact top 10."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3000, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = ListMatrix(uuid.uuid4(), uuid.uuid4(), 2, half_scan=True)  # version 2: 128-d
    m.append(rng.integers(0, 256, (3000, 16), dtype=np.uint8), x)
    real_half, real_full = exact.half_topk, exact.topk
    clock = [0.0]  # the search's clock: a scan "takes" 1 ms, the slow one 3 ms (no real sleeps, no timing noise)
    monkeypatch.setattr(cache, "time", SimpleNamespace(perf_counter=lambda: clock[0], monotonic=time.monotonic))

    def delayed(fn, scan):  # type: ignore[no-untyped-def]
        def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            clock[0] += 0.003 if scan == slow else 0.001
            return fn(*args, **kwargs)
        return run

    monkeypatch.setattr(exact, "half_topk", delayed(real_half, "fp16"))
    monkeypatch.setattr(exact, "topk", delayed(real_full, "fp32"))
    before = {s: scans._SERIES[s == "fp16"]._value.get() for s in ("fp16", "fp32")}
    for i in range(2 * SAMPLES + 20):
        q = x[i : i + 1] + 0.2 * rng.standard_normal((1, 128)).astype(np.float32)
        scores, ids, size = m.search(q, 10)
        want_s, want_rows = real_full(q, x, 10)
        assert size == 3000 and ids[0].tolist() == m.ids[want_rows[0]].tolist()
        assert np.allclose(scores[0], want_s[0], atol=1e-6)
    faster = "fp32" if slow == "fp16" else "fp16"
    assert m.scans.chosen(1) == faster
    counted = {s: scans._SERIES[s == "fp16"]._value.get() - before[s] for s in ("fp16", "fp32")}
    assert counted[slow] == SAMPLES and counted[faster] == SAMPLES + 20


def _matrix(rows: int = 2000) -> tuple[ListMatrix, np.ndarray]:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((rows, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    m = ListMatrix(uuid.uuid4(), uuid.uuid4(), 2, half_scan=True)
    m.append(rng.integers(0, 256, (rows, 16), dtype=np.uint8), x)
    return m, x


@NEEDS_SOUND_FP16
def test_a_reference_fp16_cannot_hold_scans_fp32_and_is_counted_as_such() -> None:
    m, x = _matrix()
    assert m.half is not None and m.scans.use_half(1, m.n)  # learning starts with the fp16 scan
    q = x[7:8] * 1e7  # beyond fp16's range
    before = {h: scans._SERIES[h]._value.get() for h in (True, False)}
    scores, ids, _ = m.search(q, 5)
    assert scans._SERIES[True]._value.get() == before[True] and scans._SERIES[False]._value.get() == before[False] + 1
    want_s, want_rows = exact.topk(q, x, 5)
    assert ids[0].tolist() == m.ids[want_rows[0]].tolist()
    assert np.allclose(scores[0], want_s[0], rtol=1e-6)


def test_no_fp16_copy_on_a_cpu_whose_fp16_kernel_is_not_within_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "half_scan_sound", lambda: False)
    m, x = _matrix()
    assert m.half is None
    _, ids, _ = m.search(x[3:4], 1)
    assert ids[0, 0].tolist() == m.ids[3].tolist()
