"""CPU time of the platform's processes, read from ``/proc``: what one answer costs each service.

Why: latency per hop (``Server-Timing``) says where a request waits; CPU per request says what each service
*spends* on it. On a machine of few cores the second bounds the first: a closed loop of callers cannot get more
than ``cores / (CPU seconds per request, all processes)`` answers per second, so the sum is the throughput ceiling
and each service's share is what a cut there can win. Linux only (``/proc``); elsewhere nothing is measured.
"""

from __future__ import annotations

import os
from pathlib import Path

from facedex.services import SERVICES

PROC = Path("/proc")
SHARED = ("redis-server", "valkey-server", "postgres")  # the platform's engines: every such process on the machine


def _cmdline(pid: int) -> list[str]:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _stat(pid: int) -> tuple[str, list[str]] | None:
    """``/proc/<pid>/stat``: the command name (in parentheses, may hold spaces) and the fields after it; None if gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    end = text.rindex(")")
    return text[text.index("(") + 1 : end], text[end + 2 :].split()


def processes(parent: int | None = None) -> dict[str, list[int]]:
    """``facedex serve <service>`` processes by service (only ``parent``'s children if given), and the engines'.

    Engines (Redis, PostgreSQL) are matched by name machine-wide: with a shared server, other users' work shows too.
    """
    found: dict[str, list[int]] = {}
    if not PROC.is_dir():
        return found
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        stat = _stat(pid)
        if stat is None:
            continue
        comm, fields = stat
        name = next((s for s in SHARED if comm.startswith(s)), None)
        argv = _cmdline(pid) if name is None else []
        if "serve" in argv and any("facedex" in a for a in argv):
            service = argv[argv.index("serve") + 1] if argv.index("serve") + 1 < len(argv) else ""
            if service in SERVICES and (parent is None or int(fields[1]) == parent):
                name = service
        if name is not None:
            found.setdefault(name, []).append(pid)
    return found


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pids``, threads included; a process that has gone counts 0."""
    tick = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        stat = _stat(pid)
        if stat is not None:
            user += int(stat[1][11])  # utime and stime: fields 14 and 15 of the whole line
            system += int(stat[1][12])
    return user / tick, system / tick


class CpuMeter:
    """CPU seconds of each process group between :meth:`start` and :meth:`per_request`, pid by pid.

    The processes are found again at both reads (:func:`processes`), so a backend or worker that appears during the
    level counts from zero, and one that ends during it counts nothing (its last seconds are lost, never subtracted).
    """

    def __init__(self, parent: int | None) -> None:
        self.parent = parent
        self._before: dict[int, tuple[float, float]] = {}

    def found(self) -> dict[str, list[int]]:
        return processes(self.parent)

    def start(self) -> None:
        self._before = {pid: cpu_seconds([pid]) for pids in self.found().values() for pid in pids}

    def per_request(self, requests: int) -> tuple[dict[str, float], float]:
        """Milliseconds of CPU per request of each group since :meth:`start`, and how many of all of them were the
        kernel's (system time: sockets, wake-ups, page faults)."""
        total: dict[str, float] = {}
        system = 0.0
        for name, pids in self.found().items():
            for pid in pids:
                (u0, s0), (u1, s1) = self._before.get(pid, (0.0, 0.0)), cpu_seconds([pid])
                if (u1, s1) == (0.0, 0.0):  # ended between the listing and this read
                    continue
                user, sys_ = max(u1 - u0, 0.0), max(s1 - s0, 0.0)
                total[name] = total.get(name, 0.0) + (user + sys_) * 1000 / max(requests, 1)
                system += sys_ * 1000 / max(requests, 1)
        return total, system
