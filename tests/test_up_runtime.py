"""`facedex up` as a runtime: a dead service comes back, embedded Valkey keeps its data, the CLI needs no extras."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import redis

from tests.conftest import free_port


def _serving(up: psutil.Process, service: str) -> psutil.Process | None:
    for child in up.children():
        try:
            if child.cmdline()[-2:] == ["serve", service]:
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthcheck", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_up_restarts_a_killed_service_and_keeps_the_others(database_url: str, redis_url: str, redis_prefix: str,
                                                          tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("api", "proxy", "bruteforce", "manager", "indexer", "licenses", "matcher")}
    env = {**os.environ, "FACEDEX_DATABASE_URL": database_url, "FACEDEX_REDIS_URL": redis_url,
           "FACEDEX_REDIS_PREFIX": redis_prefix + ":restart", "FACEDEX_DATA_DIR": str(tmp_path),
           **{f"FACEDEX_{name.upper()}__PORT": str(port) for name, port in ports.items()}}
    output = tmp_path / "up.out"
    with output.open("wb") as out:  # started from another folder: services must not import from the working directory
        proc = subprocess.Popen([sys.executable, "-P", "-m", "facedex", "up"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                cwd=tmp_path)
    try:
        deadline = time.monotonic() + 180
        while "facedex is up" not in output.read_text(errors="replace"):
            assert proc.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "up did not start: " + output.read_text()
            time.sleep(0.5)
        up = psutil.Process(proc.pid)
        before = {name: _serving(up, name) for name in ports}
        assert all(before.values()), before
        bruteforce_url = f"http://127.0.0.1:{ports['bruteforce']}"
        assert _healthy(bruteforce_url)

        before["bruteforce"].send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            again = _serving(up, "bruteforce")
            if again is not None and again.pid != before["bruteforce"].pid and _healthy(bruteforce_url):
                break
            assert proc.poll() is None, "up stopped: " + output.read_text()
            assert time.monotonic() < deadline, "bruteforce did not come back: " + output.read_text()
            time.sleep(0.5)
        said = output.read_text(errors="replace")
        assert "bruteforce exited with code -9; restarting in" in said and "restarted bruteforce" in said, said
        assert "Uvicorn running on" in said.split("bruteforce exited", 1)[1]  # the tail of the dead service's log
        for name, child in before.items():  # the others were never touched
            if name != "bruteforce":
                assert child.is_running() and _serving(up, name).pid == child.pid, name
        assert _healthy(f"http://127.0.0.1:{ports['api']}")
    finally:
        children = psutil.Process(proc.pid).children() if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive


def test_embedded_valkey_keeps_data_through_a_crash(tmp_path: Path) -> None:
    from facedex.embedded import start_redis

    url, server = start_redis(tmp_path)
    try:
        client = redis.Redis.from_url(url)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.config_get("appendfsync")["appendfsync"] == "everysec"
        client.hset("task:1", mapping={"status": "pending", "list_id": "x"})
        client.rpush("queue", "1")
        client.close()
        time.sleep(3)  # everysec: written to disk within about a second
        server.terminate()  # SIGKILL: no shutdown save
        url, server = start_redis(tmp_path)
        client = redis.Redis.from_url(url)
        assert client.hgetall("task:1") == {b"status": b"pending", b"list_id": b"x"}
        assert client.lrange("queue", 0, -1) == [b"1"]
        client.close()
    finally:
        server.stop()


def test_every_command_helps_without_the_bench_extra(tmp_path: Path) -> None:
    """A runtime install has no bench libraries: every --help works, and a benchmark says which extra to install."""
    blocked = ["faiss", "psutil", "hnswlib", "matplotlib", "skimage"]
    commands = [[], ["up"], ["serve"], ["migrate"], ["import"], ["account", "create"], ["list", "create"], ["tasks", "create"],
                ["license"], ["settings"], ["version"], ["bench"], ["bench", "index"], ["bench", "all"], ["bench", "e2e"]]
    script = (  # one interpreter for every command (each --help ends in SystemExit(0))
        "import contextlib, io, sys\n"
        "args = sys.argv[1:]\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # importing it raises ModuleNotFoundError\n"
        "from facedex.cli import main\n"
        f"for command in {commands!r}:\n"
        "    sys.argv = ['facedex', *command, '--help']\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            main()\n"
        "        except SystemExit as exc:\n"
        "            assert exc.code in (0, None), (command, exc.code)\n"
        "    assert 'Usage' in out.getvalue(), (command, out.getvalue())\n"
        "sys.argv = ['facedex', *args]\n"
        "main()\n"
    )
    runner = tmp_path / "no_bench.py"
    runner.write_text(script)
    out = subprocess.run([sys.executable, "-P", str(runner), "bench", "index", "--sizes", "1000", "--probes", "10",
                          "--efs", "32", "--arms", "faiss-hnsw:f32:16:32"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 1 and "pip install 'facedex[bench]'" in out.stdout, (out.stdout, out.stderr)


def test_restart_backoff_doubles_up_to_a_cap_with_jitter() -> None:
    from facedex.restarts import ServiceRestarter

    most = ServiceRestarter({}, say=print, jitter=lambda: 1.0)
    least = ServiceRestarter({}, say=print, jitter=lambda: 0.0)
    assert [most.delay(n) for n in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert [least.delay(n) for n in range(9)] == [0.25, 0.5, 1, 2, 4, 8, 15, 15, 15]
