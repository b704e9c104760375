"""What every benchmark shares: machine facts, medians, JSON records, Markdown sections."""

from __future__ import annotations

import os
import platform
import re
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }


def interrupt(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Stop a child as Ctrl-C would (SIGINT: it cleans up), killing it if it has not exited within ``timeout_s``."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def machine_line(m: dict[str, object]) -> str:
    return f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; Python {m['python']}, numpy {m['numpy']}"


def median_s(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def save_record(name: str, record: dict[str, object], out_dir: Path = Path("bench-results")) -> Path:
    """Write ``NAME-<UTC stamp>.json``; two records in the same second get ``-2``, ``-3``... (never overwrite)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    data = orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    for n in range(1, 10_000):
        path = out_dir / (f"{name}-{stamp}.json" if n == 1 else f"{name}-{stamp}-{n}.json")
        try:
            with path.open("xb") as f:
                f.write(data)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free record name for {name}-{stamp} in {out_dir}")


def write_section(doc: Path, name: str, markdown: str) -> None:
    """Replace the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` (append if absent)."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
