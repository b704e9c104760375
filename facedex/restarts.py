"""Keep ``facedex up``'s services running: a service that dies is restarted with exponential backoff and jitter.

One crashing service must not take the others down (they keep answering, and its callers fall back or retry);
backoff keeps a service that dies at once from spinning, jitter keeps restarts of several from lining up.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

Start = Callable[[], "subprocess.Popen[bytes]"]
Say = Callable[[str], None]


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class _Service:
    start: Start
    log_path: Path
    started_at: float
    failures: int = 0  # restarts in a row that did not stay up for ``stable_s``
    restart_at: float | None = None


@dataclass
class ServiceRestarter:
    """Restarts dead processes of ``procs`` (shared with the caller, which stops them all at the end)."""

    procs: dict[str, subprocess.Popen[bytes]]
    say: Say
    base_s: float = 0.5
    cap_s: float = 30.0
    stable_s: float = 60.0  # a process up this long has recovered: the next failure starts from ``base_s`` again
    jitter: Callable[[], float] = random.random
    restarts: dict[str, int] = field(default_factory=dict)
    _services: dict[str, _Service] = field(default_factory=dict)

    def add(self, name: str, start: Start, log_path: Path) -> subprocess.Popen[bytes]:
        self.procs[name] = start()
        self._services[name] = _Service(start, log_path, time.monotonic())
        return self.procs[name]

    def delay(self, failures: int) -> float:
        """Backoff for the ``failures``-th restart in a row: doubling from base_s up to cap_s, times 0.5-1."""
        return min(self.cap_s, self.base_s * 2**failures) * (0.5 + self.jitter() / 2)

    def poll(self) -> None:
        now = time.monotonic()
        for name, service in self._services.items():
            proc = self.procs[name]
            if service.restart_at is None:
                code = proc.poll()
                if code is None:
                    continue
                if now - service.started_at >= self.stable_s:
                    service.failures = 0
                wait = self.delay(service.failures)
                service.failures += 1
                service.restart_at = now + wait
                self.say(
                    f"{name} exited with code {code}; restarting in {wait:.1f} s (restart {self.restarts.get(name, 0) + 1}); "
                    f"last lines of {service.log_path}:\n{log_tail(service.log_path)}"
                )
            elif now >= service.restart_at:
                self.procs[name] = service.start()
                service.started_at, service.restart_at = now, None
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self.say(f"restarted {name} (pid {self.procs[name].pid})")
