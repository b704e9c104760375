"""The matching path under faults: private Redis and PostgreSQL, every service a process, load with exact checks.

Two proxies and two brute-force Matchers (the API and the proxies name both), one Indexed Matcher serving an
indexed list built through the Index Manager, and client threads matching all along, each answer checked
against numpy's exact search. Faults: kill -9 of one proxy and of one brute-force Matcher, of one of two
Indexed Matchers and of one of two APIs, Redis kill -9 + restart (AOF), a Redis stall (SIGSTOP), a
PostgreSQL restart and stall. Nothing is restarted by hand
except the killed dependency itself.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from facedex.bench.datasets import face_like
from tests.conftest import Services, free_port, new_client
from tests.test_indexing import wait_task


PG_BIN = Path("/usr/lib/postgresql/15/bin")
N = 3000

pytestmark = [
    pytest.mark.skipif(
        shutil.which("redis-server") is None or not (PG_BIN / "pg_ctl").exists() or os.geteuid() != 0,
        reason="needs redis-server, PostgreSQL 15 binaries and root (to run PostgreSQL as the postgres user)",
    ),
    pytest.mark.usefixtures("as_operator"),  # raw httpx calls act as an operator
]


# ----------------------------------------------------------------------------------------- private servers
class PrivateRedis:
    """A redis-server of this module's own, with AOF, on a free port: killed, restarted and stalled at will."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = (self.work / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.work)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                import redis

                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except Exception:
                assert time.monotonic() < deadline, "private redis did not start"
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)


class PrivatePostgres:
    """A PostgreSQL 15 cluster of this module's own (run as the postgres user), restarted and stalled at will."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="facedex-faults-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/facedex"
        shutil.chown(self.root, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _pg(self, tool: str, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.root)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._pg("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def processes(self) -> list[psutil.Process]:
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        main = psutil.Process(pid)
        return [main, *main.children(recursive=True)]

    def cleanup(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ the load
@dataclass
class Answer:
    at: float
    status: int
    route: str = ""
    consistency: str = ""
    seconds: float = 0.0
    wrong: str | None = None
    error: str | None = None
    exact: bool = False  # forced exact (brute force): not a candidate for the indexed route
    attempts: list[str] = field(default_factory=list)  # the API URLs tried, in order (the last one answered)


@dataclass
class Load:
    """Client threads matching probes (half of them forced exact) and checking each answer against numpy.

    With several ``apis`` the requests go round robin over them, and a request whose connection is refused or
    reset is sent again to the next API (what a load balancer in front of the APIs does; matching is read-only,
    so a retry is safe). With one API (``api``) nothing is retried.
    """

    api: str
    token: str
    list_id: str
    gallery: np.ndarray
    probes: np.ndarray
    ids: list[str]
    threads: int = 3
    apis: list[str] = field(default_factory=list)  # API URLs to spread requests over (default: [api])
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.index = {f: i for i, f in enumerate(self.ids)}

    def check(self, probe: np.ndarray, results: list[dict]) -> str | None:
        scores = self.gallery @ probe
        want = int(np.argmax(scores))
        if not results or self.index.get(results[0]["face_id"]) != want:
            return f"top-1 {results[0]['face_id'] if results else None} is not the exact {self.ids[want]}"
        sims = [r["similarity"] for r in results]
        if sims != sorted(sims, reverse=True):
            return "not sorted"
        for r in results:
            truth = float(np.clip(scores[self.index[r["face_id"]]], 0, 1))
            if abs(r["similarity"] - truth) > 1e-4:
                return f"similarity {r['similarity']} of {r['face_id']} is not {truth}"
        return None

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        urls = self.apis or [self.api]
        clients = [httpx.Client(base_url=url, headers={"Authorization": f"Bearer {self.token}"}, timeout=60) for url in urls]
        try:
            n = 0
            while not self._stop.is_set():
                q = int(rng.integers(len(self.probes)))
                probe = self.probes[q]
                exact = n % 2 == 1
                body = {"references": [{"descriptor": {"data": base64.b64encode(probe.astype("<f4").tobytes()).decode()}}],
                        "candidates": {"list_id": self.list_id, "limit": 5, "exact": exact}}
                first = (n // 2) % len(clients)  # round robin over the API URLs (exact and not on each)
                n += 1
                started = time.monotonic()
                resp: httpx.Response | None = None
                error: Exception | None = None
                attempts: list[str] = []
                for i in range(len(clients)):
                    j = (first + i) % len(clients)
                    http = clients[j]
                    attempts.append(urls[j])
                    try:
                        resp = http.post("/1/matcher/faces", json=body)
                        break
                    except (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
                        error = exc  # refused or reset: what a load balancer retries on the next instance
                    except httpx.HTTPError as exc:
                        error = exc
                        break
                if resp is None:
                    self.answers.append(Answer(started, 0, error=f"{type(error).__name__}: {error}",
                                               seconds=time.monotonic() - started, exact=exact, attempts=attempts))
                    continue
                answer = Answer(started, resp.status_code, seconds=time.monotonic() - started, exact=exact,
                                attempts=attempts)
                if resp.status_code == 200:
                    got = resp.json()
                    answer.route, answer.consistency = got["route"], got["consistency"]
                    answer.wrong = self.check(probe, got["matches"][0]["results"])
                else:
                    answer.error = resp.text[:300]
                self.answers.append(answer)
        finally:
            for http in clients:
                http.close()

    def __enter__(self) -> Load:
        self.answers = []
        self._stop.clear()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(timeout=90)

    def since(self, t: float) -> list[Answer]:
        return [a for a in list(self.answers) if a.at >= t]

    def assert_all_good(self) -> None:
        bad = [a for a in self.answers if a.status != 200 or a.wrong]
        assert self.answers, "no answers at all"
        assert not bad, f"{len(bad)} of {len(self.answers)} failed or wrong, e.g. {bad[:3]}"

    def wait_indexed(self, after: float, within: float) -> float:
        """Seconds from ``after`` until the first indexed answer of a request sent after it."""
        deadline = time.monotonic() + within + 5
        while time.monotonic() < deadline:
            hits = [a for a in self.since(after) if a.route == "indexed"]
            if hits:
                return min(a.at for a in hits) - after
            time.sleep(0.1)
        raise AssertionError(f"no indexed answer within {within}s; routes since: "
                             f"{sorted({a.route for a in self.since(after)})}")


def health(url: str) -> int:
    try:
        return httpx.get(url + "/healthcheck", timeout=5).status_code
    except httpx.HTTPError:
        return 0


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrivateRedis, PrivatePostgres]]:
    import asyncio

    from facedex.services import prepare_database

    redis_server = PrivateRedis(tmp_path_factory.mktemp("faults-redis"))
    redis_server.start()
    pg = PrivatePostgres()
    try:
        pg.start()
        asyncio.run(prepare_database(pg.url))
        yield redis_server, pg
    finally:
        if redis_server.proc is not None:
            redis_server.signal(signal.SIGCONT)
            redis_server.kill()
        for p in _safe(pg.processes):
            p.resume()
        pg.cleanup()


def _safe(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except Exception:
        return []


@pytest.fixture(scope="module")
def cluster(private, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Services, Load]]:
    redis_server, pg = private
    svc = Services(pg.url, redis_server.url, "faults", tmp_path_factory.mktemp("faults-services"))
    for name in ("proxy2", "bruteforce2"):
        svc.ports[name] = free_port()
    svc.env["FACEDEX_MATCHING__PROXY_URLS"] = json.dumps([svc.url("proxy"), svc.url("proxy2")])
    svc.env["FACEDEX_MATCHING__BRUTEFORCE_URLS"] = json.dumps([svc.url("bruteforce"), svc.url("bruteforce2")])
    svc.env["FACEDEX_MATCHING__INSTANCE_COOLDOWN_S"] = "1"
    try:
        for name, service in (("licenses", None), ("bruteforce", None), ("bruteforce2", "bruteforce"), ("proxy", None),
                              ("proxy2", "proxy"), ("api", None), ("indexer", None), ("manager", None), ("matcher", None)):
            svc.start(name, service)
        data = face_like(N, n_probes=100, seed=5)
        client = new_client(svc)
        list_id = client.post("/1/lists", json={}).json()["list_id"]
        ids: list[str] = []
        for start in range(0, N, 1000):
            faces = [{"descriptor": {"version": 1, "data": base64.b64encode(v.astype("<f4").tobytes()).decode()}}
                     for v in data.gallery[start : start + 1000]]
            resp = client.post("/1/faces/batch", json={"faces": faces, "list_ids": [list_id]})
            assert resp.status_code == 201, resp.text
            ids += resp.json()["face_ids"]
        task = httpx.post(svc.url("manager") + "/1/tasks", json={"list_id": list_id}, headers=svc.internal).json()
        assert wait_task(svc.url("manager"), task["task_id"], timeout=180)["status"] == "success"
        wait_until(lambda: any(i["list_id"] == list_id
                               for i in httpx.get(svc.url("matcher") + "/1/indexes", headers=svc.internal).json()["indexes"]),
                   60, "the matcher to load the index")
        token = client.headers["Authorization"].split(" ", 1)[1]
        load = Load(svc.url("api"), token, list_id, data.gallery, data.probes, ids)
        with load:  # the indexed route works before any fault
            load.wait_indexed(time.monotonic(), 30)
        load.assert_all_good()
        yield svc, load
    finally:
        svc.stop()


def indexed_share(answers: list[Answer]) -> float:
    auto = [a for a in answers if a.route and not a.exact]
    return sum(a.route == "indexed" for a in auto) / max(1, len(auto))


# ------------------------------------------------------------------------------------------------- faults
def test_kill_one_proxy_and_one_bruteforce_matcher(cluster) -> None:
    svc, load = cluster
    with load:
        time.sleep(1.5)
        svc.procs["proxy"].kill()
        time.sleep(2.0)
        svc.procs["bruteforce"].kill()
        time.sleep(3.0)
    load.assert_all_good()
    assert len(load.answers) > 20
    assert {"indexed", "bruteforce"} <= {a.route for a in load.answers}
    assert health(svc.url("api")) == 200 and health(svc.url("proxy2")) == 200  # one brute-force Matcher is enough
    svc.start("proxy")
    svc.start("bruteforce")


def test_kill_one_of_two_indexed_matchers(cluster, private) -> None:
    """kill -9 of one of two Indexed Matchers serving the list under load: the other keeps the indexed route.

    Entries the dead one had read stay pending on it: the survivor claims them after ``indexed.claim_idle_ms``
    (and drops those past their deadline) while the proxy, waiting at most ``indexed.request_timeout_s``,
    answers them by brute force; new entries go to the survivor alone. The victim is frozen (SIGSTOP) for up
    to 3 s before the kill, so that it dies holding entries (a blocked read still takes them).
    """
    import redis

    from facedex.redis.keys import Keys

    svc, load = cluster
    redis_server, _ = private
    svc.start("matcher2", "matcher")
    m1, m2 = svc.url("matcher"), svc.url("matcher2")

    def state(url: str) -> dict:  # type: ignore[type-arg]
        return httpx.get(url + "/1/indexes", headers=svc.internal, timeout=5).json()

    def serves(url: str) -> bool:
        return any(i["list_id"] == load.list_id for i in state(url)["indexes"])

    try:
        wait_until(lambda: serves(m2), 60, "the second matcher to load the index")
        with load:
            before = {url: state(url)["served"] for url in (m1, m2)}
            wait_until(lambda: all(state(url)["served"] > before[url] for url in (m1, m2)), 30,
                       "both matchers to serve indexed requests")
            dead = state(m1)["matcher_id"]
            stream = Keys("faults").stream(Keys.matching_label(load.list_id, 1))
            r = redis.Redis.from_url(redis_server.url)

            def stuck() -> int:  # entries delivered to the dead matcher and not acknowledged
                return len(r.xpending_range(stream, Keys.MATCHER_GROUP, "-", "+", 100, consumername=dead))

            # frozen first (its blocked read still takes entries), so that it most likely dies holding some
            svc.procs["matcher"].send_signal(signal.SIGSTOP)
            deadline = time.monotonic() + 3.0
            while not stuck() and time.monotonic() < deadline:
                time.sleep(0.05)
            svc.procs["matcher"].kill()
            svc.procs["matcher"].wait()
            killed = time.monotonic()
            survivor_before = state(m2)["served"]
            took = load.wait_indexed(killed, 5.0)
            wait_until(lambda: not stuck(), 15, "the dead matcher's pending entries to be claimed")
            time.sleep(max(1.0, killed + 5.0 - time.monotonic()))
            settled = [a for a in load.since(killed + 2.0) if a.route]
        load.assert_all_good()
        assert took <= 5.0, f"indexed answers resumed {took:.1f}s after the kill"
        assert state(m2)["served"] > survivor_before, "the survivor went on serving"
        assert settled and indexed_share(settled) >= 0.5, f"indexed share after the kill: {indexed_share(settled):.2f}"
        assert max(a.seconds for a in load.answers) < 10.0, "no request waited on the dead matcher"
        assert health(m2) == 200 and health(svc.url("proxy")) == 200
    finally:
        if svc.procs["matcher"].poll() is not None:  # the module's other tests use the first matcher
            svc.start("matcher")
            wait_until(lambda: serves(m1), 60, "the restarted matcher to load the index")
        svc.stop("matcher2")


def test_kill_one_of_two_apis(cluster) -> None:
    """kill -9 of one of two API instances under load: 0 failed requests, 0 wrong answers.

    The load generator spreads the requests over both API URLs and, when a connection is refused or reset,
    sends the request again to the other API: what a load balancer in front of the APIs does.
    """
    svc, load = cluster
    svc.start("api2", "api")
    apis = [svc.url("api"), svc.url("api2")]
    load.apis = apis
    try:
        with load:
            wait_until(lambda: {a.attempts[-1] for a in load.answers if a.status == 200} >= set(apis), 30,
                       "both APIs to answer")
            time.sleep(1.0)  # both under load
            svc.procs["api2"].kill()
            svc.procs["api2"].wait()
            killed = time.monotonic()
            time.sleep(3.0)
        load.assert_all_good()
        assert {a.attempts[-1] for a in load.answers if a.at < killed} >= set(apis), "both APIs answered"
        after = load.since(killed)
        assert len(after) > 5 and all(a.attempts[-1] == apis[0] for a in after), "the survivor answered all"
        assert any(a.attempts[:1] == [apis[1]] for a in after), "requests first sent to the dead API were retried"
    finally:
        load.apis = []
        if svc.procs["api2"].poll() is None:
            svc.stop("api2")


def test_redis_kill_and_restart(cluster, private) -> None:
    svc, load = cluster
    redis_server, _ = private
    with load:
        time.sleep(1.0)
        redis_server.kill()
        wait_until(lambda: health(svc.url("matcher")) == 503 and health(svc.url("proxy2")) == 503, 20,
                   "/healthcheck to turn red while Redis is down")
        time.sleep(1.0)
        during = time.monotonic()
        # a list change cannot be announced (facedex.redis.heads): refused with its code, and nothing changed
        api = httpx.Client(base_url=svc.url("api"), headers={"Authorization": f"Bearer {load.token}"}, timeout=10)
        stranger = np.random.default_rng(3).standard_normal(512).astype("<f4")
        face = api.post("/1/faces", json={"descriptor": {"data": base64.b64encode((stranger / np.linalg.norm(stranger))
                                                                                  .astype("<f4").tobytes()).decode()}})
        assert face.status_code == 201, face.text  # a face in no list changes no list: no head to announce
        count = api.get(f"/1/lists/{load.list_id}").json()["face_count"]
        attach = {"action": "attach", "face_ids": [face.json()["face_id"]]}
        refused = api.patch(f"/1/lists/{load.list_id}/faces", json=attach)
        assert refused.status_code == 503 and refused.json()["error_code"] == 13005, refused.text
        assert api.get(f"/1/lists/{load.list_id}").json()["face_count"] == count
        assert health(svc.url("api")) == 503  # its writes cannot work: red, not hidden
        time.sleep(1.0)
        redis_server.start()
        back = time.monotonic()
        took = load.wait_indexed(back, 5.0)
        wait_until(lambda: all(health(svc.url(n)) == 200 for n in ("matcher", "proxy", "proxy2", "api")), 15,
                   "/healthcheck to turn green after Redis is back")
        accepted = api.patch(f"/1/lists/{load.list_id}/faces", json=attach)
        assert accepted.status_code == 200, accepted.text
        assert api.get(f"/1/lists/{load.list_id}").json()["face_count"] == count + 1
        api.patch(f"/1/lists/{load.list_id}/faces", json={**attach, "action": "detach"})
        time.sleep(1.0)
    load.assert_all_good()
    assert [a for a in load.since(during) if a.at < back and a.status == 200], "brute force answered during the outage"
    assert took <= 5.0, f"indexed answers resumed {took:.1f}s after Redis was back"


def test_redis_stall(cluster, private) -> None:
    svc, load = cluster
    redis_server, _ = private
    with load:
        time.sleep(1.0)
        redis_server.signal(signal.SIGSTOP)
        stalled = time.monotonic()
        try:
            time.sleep(6.0)
        finally:
            redis_server.signal(signal.SIGCONT)
        back = time.monotonic()
        took = load.wait_indexed(back, 5.0)
        time.sleep(1.0)
    load.assert_all_good()
    during = [a for a in load.since(stalled) if a.at < back]
    assert during and max(a.seconds for a in during) < 5.0, "requests during the stall were answered within seconds"
    assert took <= 5.0


def test_postgres_restart_and_stall(cluster, private) -> None:
    svc, load = cluster
    _, pg = private
    with load:
        time.sleep(1.0)
        pg.stop("fast")
        down = time.monotonic()
        time.sleep(3.0)
        pg.start()
        up = time.monotonic()
        time.sleep(2.0)
        procs = pg.processes()
        for p in procs:
            p.suspend()
        stalled = time.monotonic()
        try:
            time.sleep(1.0)
            asked = time.monotonic()
            red = health(svc.url("bruteforce2"))  # answers (red) within its 5 s client timeout, not hung on the DB
            assert red == 503 and time.monotonic() - asked < 5.0, red
            time.sleep(max(0.0, stalled + 4.0 - time.monotonic()))
        finally:
            for p in procs:
                p.resume()
        resumed = time.monotonic()
        time.sleep(3.0)
    load.assert_all_good()
    outage = [a for a in load.answers if down <= a.at < up or stalled <= a.at < resumed]
    assert outage, "answers kept coming while PostgreSQL was down or stalled"
    assert any(a.consistency == "stale" for a in outage), "answers during the outage say they are stale"
    assert max(a.seconds for a in load.answers) < 10.0, "no request hung on the Faces DB"
    fresh_again = [a for a in load.since(resumed + 1.5)]
    assert fresh_again and all(a.consistency == "fresh" for a in fresh_again)


def test_refuse_when_stale_if_the_operator_says_so(cluster, private) -> None:
    """With matching.when_stale = "refuse", an unreachable Faces DB gives 14007 within about a second, not a stale answer."""
    import asyncio

    from facedex import internal_auth, wire
    from facedex.errors import Errors, FacedexError
    from facedex.rpc import ServiceClient

    svc, load = cluster
    _, pg = private
    svc.start("bruteforce-refuse", "bruteforce", FACEDEX_MATCHING__WHEN_STALE="refuse")
    account = httpx.get(load.api + "/1/account", headers={"Authorization": f"Bearer {load.token}"}).json()["account_id"]
    req = internal_auth.sign_request(svc.internal_token, wire.MatchRequest(  # as the API signs it
        uuid_bytes(account), uuid_bytes(load.list_id), 1, load.probes[0].astype("<f4").tobytes(), 5), 600)

    async def call() -> tuple[float, object]:
        client = ServiceClient(svc.url("bruteforce-refuse"), 30)
        client.headers = dict(svc.internal)
        started = time.monotonic()
        try:
            return time.monotonic() - started, await client.call("/1/match", req, wire.MatchResponse)
        except FacedexError as exc:
            return time.monotonic() - started, exc
        finally:
            await client.close()

    try:
        _, warm = asyncio.run(call())  # the list is now cached
        assert isinstance(warm, wire.MatchResponse) and warm.consistency == "fresh"
        procs = pg.processes()
        for p in procs:
            p.suspend()
        try:
            took, refused = asyncio.run(call())
        finally:
            for p in procs:
                p.resume()
        assert isinstance(refused, FacedexError) and refused.error is Errors.FACES_DB_UNAVAILABLE, refused
        assert took < 3.0, f"refused after {took:.1f}s"
    finally:
        svc.stop("bruteforce-refuse")


def uuid_bytes(text: str) -> bytes:
    import uuid

    return uuid.UUID(text).bytes
