"""`facedex bench e2e`'s CPU meter (facedex.bench.service_cpu): it finds a platform's services among the machine's
processes by their command line and parent, and counts the CPU each one spends."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from facedex.bench import service_cpu

pytestmark = pytest.mark.skipif(not service_cpu.PROC.is_dir(), reason="reads /proc (Linux)")

# spins on its CPU for the seconds given on its stdin, says so, then waits to be killed
SPIN = ("import sys, time\n"
        "for line in sys.stdin:\n"
        "    end = time.process_time() + float(line)\n"
        "    while time.process_time() < end: pass\n"
        "    print('spun', flush=True)\n")


@pytest.fixture
def fake_services() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Children whose command lines read like ``facedex serve api`` / ``... serve proxy``, and one that does not."""
    procs = {name: subprocess.Popen([sys.executable, "-c", SPIN, "facedex", "serve", name], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True) for name in ("api", "proxy", "not-a-service")}
    try:
        yield procs
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_the_services_of_a_platform_are_found_by_parent_and_command_line(fake_services: dict[str, subprocess.Popen[str]]) -> None:
    found = service_cpu.processes(os.getpid())  # (a test session may run real services of its own beside these)
    assert fake_services["api"].pid in found.get("api", []) and fake_services["proxy"].pid in found.get("proxy", [])
    assert fake_services["api"].pid not in found.get("proxy", [])
    assert "not-a-service" not in found and all(fake_services["not-a-service"].pid not in pids for pids in found.values())
    others = service_cpu.processes(os.getppid())  # another platform's parent: not ours
    assert fake_services["api"].pid not in others.get("api", [])


def test_the_meter_counts_each_process_s_own_cpu(fake_services: dict[str, subprocess.Popen[str]]) -> None:
    meter = service_cpu.CpuMeter({name: [p.pid] for name, p in fake_services.items() if name != "not-a-service"})
    meter.start()
    api = fake_services["api"]
    assert api.stdin is not None and api.stdout is not None
    api.stdin.write("0.4\n")
    api.stdin.flush()
    assert api.stdout.readline().strip() == "spun"
    per_request, system = meter.per_request(2)
    assert 0.15 * 1000 <= per_request["api"] <= 0.5 * 1000, per_request  # 0.4 s over 2 requests, in ms, tick-rounded
    assert per_request["proxy"] < 30, per_request  # it only waited
    assert 0 <= system <= per_request["api"] + per_request["proxy"]
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert service_cpu.cpu_seconds([gone.pid]) == (0.0, 0.0)  # a process that has ended counts nothing
