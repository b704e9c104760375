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
        "print('ready', flush=True)\n"
        "for line in sys.stdin:\n"
        "    end = time.process_time() + float(line)\n"
        "    while time.process_time() < end: pass\n"
        "    print('spun', flush=True)\n")


@pytest.fixture
def fake_services() -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Children whose command lines read like ``facedex serve api`` / ``... serve proxy``, and one that does not."""
    procs = {name: subprocess.Popen([sys.executable, "-c", SPIN, "facedex", "serve", name], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True) for name in ("api", "proxy", "not-a-service")}
    for p in procs.values():  # started up: the interpreter's own start is not in what the tests measure
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
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
    meter = service_cpu.CpuMeter(os.getpid())
    meter.start()
    api = fake_services["api"]
    assert api.stdin is not None and api.stdout is not None
    api.stdin.write("0.4\n")
    api.stdin.flush()
    assert api.stdout.readline().strip() == "spun"
    late = subprocess.Popen([sys.executable, "-c", SPIN, "facedex", "serve", "matcher"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # a service that starts during the level
    try:
        assert late.stdout is not None and late.stdout.readline().strip() == "ready"
        fake_services["proxy"].kill()  # and one that ends during it: its time is lost, never subtracted
        fake_services["proxy"].wait()
        per_request, system = meter.per_request(2)
    finally:
        late.kill()
        late.wait()
    # the api's 0.4 s over 2 requests, in ms, tick-rounded (a test session's own services may add to it)
    assert 0.15 * 1000 <= per_request["api"], per_request
    assert per_request.get("proxy", 0.0) >= 0 and per_request["matcher"] > 0, per_request  # its interpreter's start
    assert 0 <= system <= sum(per_request.values())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert service_cpu.cpu_seconds([gone.pid]) == (0.0, 0.0)  # a process that has ended counts nothing
