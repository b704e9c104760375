"""The dashboard in headless Chromium against a running platform (issue 17).

The dashboard runs with an Index Manager, Indexer and Indexed Matcher of its own
(Redis prefix ``<run prefix>:dash``, index storage of their own), so the 10,000 task records written for the
paging test and the master-lock takeover of the cancel test touch no other test.
Set ``FACEDEX_TEST_DASHBOARD_SCREENSHOTS=docs/img`` to refresh the screenshots in docs/.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import numpy as np
import pytest
import redis

from facedex.config import Settings
from facedex.manager.tasks import Task
from facedex.redis.keys import Keys
from tests.conftest import Services, new_client

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT_MS = 90_000  # a loaded 2-core machine: generous bounds, never tight timing

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (.ci/run installs it)")


class Dash:
    def __init__(self, services: Services, redis_url: str) -> None:
        self.services = services
        self.prefix = f"{services.env['FACEDEX_REDIS_PREFIX']}:dash"
        self.keys = Keys(self.prefix)
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)
        # index storage of its own too: the run's shared matcher never loads (nor spends time on) these indexes
        env = {"FACEDEX_REDIS_PREFIX": self.prefix, "FACEDEX_INDEX_STORAGE__PATH": str(services.log_dir / "indexes-dash")}
        self.manager = services.start_indexing("dash", **env)
        services.start("matcher-dash", "matcher", **env)
        services.start(
            "dashboard", **env,
            FACEDEX_MANAGER__PORT=str(services.ports["manager-dash"]),
            FACEDEX_INDEXER__PORT=str(services.ports["indexer-dash"]),
            FACEDEX_MATCHER__PORT=str(services.ports["matcher-dash"]),
            FACEDEX_DASHBOARD_UI__PAGE_SIZE="50",
        )
        self.url = services.url("dashboard")
        self.admin = {"Authorization": f"Bearer {services.admin_token}"}


@pytest.fixture(scope="module")
def dash(services: Services, redis_url: str) -> Iterator[Dash]:
    d = Dash(services, redis_url)
    yield d
    for name in ("dashboard", "matcher-dash", "manager-dash", "indexer-dash"):
        services.stop(name)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("FACEDEX_TEST_DASHBOARD_SCREENSHOTS")
    path = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def page(browser: object, dash: Dash) -> Iterator[object]:
    """A logged-in page: the login form sets the session cookie."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    resp = pg.goto(dash.url + "/lists")
    assert resp.status == 401 and pg.locator("input#token").count() == 1
    pg.fill("input#token", "wrong")
    pg.click("button[type=submit]")
    assert pg.locator("#login-error").inner_text() == "Wrong admin token."
    pg.fill("input#token", dash.services.admin_token)
    pg.click("button[type=submit]")
    pg.wait_for_url(dash.url + "/lists")
    assert pg.locator("h1").inner_text() == "Lists"
    cookie = next(c for c in context.cookies() if c["name"] == "facedex_dashboard")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert dash.services.admin_token not in cookie["value"]
    yield pg
    context.close()


def _vec(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(512).astype(np.float32)
    return v / np.linalg.norm(v)


def _b64(v: np.ndarray) -> str:
    return base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()


def _make_list(api: httpx.Client, n: int, rng: np.random.Generator, label: str) -> tuple[str, list[str]]:
    list_id = api.post("/1/lists", json={"user_data": label}).json()["list_id"]
    vecs = [_vec(rng) for _ in range(n)]
    ids: list[str] = []
    for start in range(0, n, 1000):
        r = api.post("/1/faces/batch", json={"list_ids": [list_id], "faces": [
            {"descriptor": {"version": 1, "data": _b64(v)}} for v in vecs[start:start + 1000]]})
        assert r.status_code == 201, r.text
        ids += r.json()["face_ids"]
    return list_id, ids


# ---------------------------------------------------------------------------------------------------- auth
PAGES = [("GET", "/"), ("GET", "/lists"), ("GET", "/tasks"), ("GET", "/matchers"), ("GET", "/matching"), ("GET", "/search"),
         ("GET", "/login"), ("GET", "/static/dashboard.js"), ("GET", "/static/dashboard.css"), ("POST", "/search"),
         ("POST", "/tasks/create"), ("POST", "/tasks/{task_id}/cancel")]
DATA = [("GET", "/data/health"), ("GET", "/data/lists"), ("GET", "/data/tasks"), ("GET", "/data/matchers"),
        ("GET", "/data/metrics"), ("POST", "/data/tasks"), ("DELETE", "/data/tasks/{task_id}"), ("POST", "/data/search")]
OPEN = {("GET", "/healthcheck"), ("GET", "/metrics"), ("GET", "/version"), ("POST", "/login"), ("POST", "/logout")}


def test_every_route_answers_401_without_the_admin_token(dash: Dash) -> None:
    from facedex.dashboard.app import build_app

    app = build_app(Settings(admin_token="x"))
    declared = {(m, r.path) for r in app.routes for m in getattr(r, "methods", ()) if m != "HEAD"}
    declared = {(m, "/static/dashboard.js" if p == "/static/{name}" else p) for m, p in declared}
    assert declared - OPEN == {*PAGES, *DATA} - {("GET", "/static/dashboard.css")}, "a route is missing from this test"

    forged = {"Cookie": f"facedex_dashboard={int(time.time()) + 3600}.abcd.{'0' * 64}"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, forged):
        for method, path in PAGES + DATA:
            url = dash.url + path.replace("{task_id}", str(uuid.uuid4()))
            r = httpx.request(method, url, headers=headers, json={} if path.startswith("/data") and method != "GET" else None)
            assert r.status_code == 401, (method, path, headers, r.status_code, r.text[:200])
            if path.startswith("/data"):
                assert r.json()["error_code"] == 18001
            else:
                assert 'name="token"' in r.text and "facedex" not in r.headers.get("set-cookie", "")
    # the admin token as a bearer opens the data endpoints (scripts); a page POST from another origin is refused
    assert httpx.get(dash.url + "/data/health", headers=dash.admin).status_code == 200
    r = httpx.post(dash.url + "/data/tasks", headers={**dash.admin, "Origin": "http://evil.example"}, json={"list_id": str(uuid.uuid4())})
    assert r.status_code == 403


# ---------------------------------------------------------------------------------------------------- the main flow
def test_build_from_the_page_then_served_and_searched(dash: Dash, page: object, shots: Path) -> None:
    pg = page
    rng = np.random.default_rng(17)
    api = new_client(dash.services)
    list_id, face_ids = _make_list(api, 400, rng, "dashboard e2e")
    account_id = api.get("/1/account").json()["account_id"]
    # the planted mate: a face outside the list, a new "photo" of the list's face 123 (cosine ~0.8)
    mate = face_ids[123]
    probe_vec = _vec(rng)
    r = api.post("/1/faces/batch", json={"faces": [{"descriptor": {"version": 1, "data": _b64(probe_vec)}}]})
    probe = r.json()["face_ids"][0]
    api.put(f"/1/faces/{mate}/descriptor", json={"version": 1, "data": _b64(_noisy(probe_vec, 0.8, rng))}).raise_for_status()

    # the list is there, without an index, matched by brute force
    pg.goto(f"{dash.url}/lists?account_id={account_id}")
    row = pg.locator("table.lists tbody tr", has_text=list_id)
    assert row.locator(".faces").inner_text() == "400"
    assert "no index" in row.inner_text() and "brute force" in row.inner_text()
    assert "1" in row.locator("td").nth(3).inner_text()  # descriptor versions

    # build it from the page; follow the task to success on the tasks page (its live part refreshes itself)
    row.locator("button.build").click()
    pg.wait_for_selector("#flash.ok")
    assert "queued" in pg.locator("#flash").inner_text()
    task_id = re.search(r"task ([0-9a-f-]{36}) queued", pg.locator("#flash").inner_text()).group(1)  # type: ignore[union-attr]
    pg.goto(f"{dash.url}/tasks?list_id={list_id}")
    task_row = pg.locator("table.history tbody tr", has_text=task_id)
    seen = set()
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:  # the page is never reloaded here: dashboard.js swaps the live part in
        status = task_row.locator(".status").inner_text()
        seen.add(status)
        if status in ("success", "failed", "cancelled"):
            break
        time.sleep(0.2)
    assert status == "success", seen
    assert task_row.locator(".pct").inner_text() == "100%"
    pg.screenshot(path=str(shots / "dashboard-tasks.png"), full_page=True)

    # the list gets its index, then a matcher serves it (label in Redis), all on the same page without reloading
    pg.goto(f"{dash.url}/lists?account_id={account_id}")
    row = pg.locator("table.lists tbody tr", has_text=list_id)
    row.locator(".index-id").wait_for()
    row.locator(".served").wait_for()
    kind = row.locator(".kind").inner_text()
    assert kind.split()[0] in ("sign", "pq_fastscan", "rabitq", "hnsw")  # the kind its build chose
    assert row.locator(".lag").inner_text() == "0"
    assert "calibration" in row.inner_text() and '"rescore"' in row.inner_text()  # the measured choice, shown
    served_by = row.locator(".served").inner_text()
    assert served_by.endswith(f":{dash.services.ports['matcher-dash']}")  # the matcher id: host:port
    pg.screenshot(path=str(shots / "dashboard-lists.png"), full_page=True)

    # the matchers page shows the loaded index, the master and the license
    pg.goto(f"{dash.url}/matchers")
    pg.locator("table.loaded tbody tr", has_text=list_id).wait_for()
    assert pg.locator("#master").inner_text() not in ("", "—")
    assert pg.locator("#license").inner_text().startswith("valid")
    assert pg.locator("table.labels tbody tr", has_text=served_by).count() == 1
    pg.screenshot(path=str(shots / "dashboard-matchers.png"), full_page=True)

    # search by face id: the planted mate comes first
    pg.goto(f"{dash.url}/search")
    pg.fill("#search-list", list_id)
    pg.fill("#search-face", probe)
    pg.click("#search-go")
    pg.wait_for_selector("table.hits")
    first = pg.locator("table.hits tbody tr").first
    assert first.locator(".hit-face").inner_text() == mate
    assert 0.75 < float(first.locator(".similarity").inner_text()) < 0.85
    pg.screenshot(path=str(shots / "dashboard-search.png"), full_page=True)

    # matching metrics: the proxy's routes and the API's latency, from their /metrics
    pg.goto(f"{dash.url}/matching")
    pg.locator("table.match-routes tbody tr").first.wait_for()
    assert "/1/matcher/faces" in pg.locator("main").inner_text()
    pg.screenshot(path=str(shots / "dashboard-matching.png"), full_page=True)


def _noisy(v: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    n = _vec(rng)
    n -= (n @ v) * v
    n /= np.linalg.norm(n)
    return cosine * v + np.sqrt(1 - cosine**2) * n


def test_search_by_uploaded_photo(dash: Dash, page: object) -> None:
    from facedex.bench.photos import face_recognition_photos

    pg = page
    photos = face_recognition_photos()
    api = new_client(dash.services)
    list_id = api.post("/1/lists", json={"user_data": "photos"}).json()["list_id"]
    ids = {}
    for name in ("obama", "biden"):
        r = api.post("/1/images/faces", files={"image": (f"{name}.jpg", photos[name], "image/jpeg")}, data={"list_ids": [list_id]})
        assert r.status_code == 201, r.text
        ids[name] = r.json()["faces"][0]["face_id"]
    pg.goto(f"{dash.url}/search")
    pg.fill("#search-list", list_id)
    pg.set_input_files("input[name=photo]", files=[{"name": "obama2.jpg", "mimeType": "image/jpeg", "buffer": photos["obama2"]}])
    pg.click("#search-go")
    pg.wait_for_selector("table.hits")
    first = pg.locator("table.hits tbody tr").first
    assert first.locator(".hit-face").inner_text() == ids["obama"]
    assert float(first.locator(".similarity").inner_text()) > 0.363  # SFace's threshold: the same man
    # a list that does not exist: the error is shown with its code, not a 5xx
    pg.fill("#search-list", str(uuid.uuid4()))
    pg.click("#search-go")
    assert "12001" in pg.locator("#search-error").inner_text()


def test_cancel_a_task_from_the_page(dash: Dash, page: object) -> None:
    """A task kept pending (the master lock is held by no manager for a while) is cancelled with its button."""
    pg = page
    api = new_client(dash.services)
    list_id, _ = _make_list(api, 20, np.random.default_rng(5), "to cancel")
    dash.redis.set(dash.keys.master_lock, "test-holds-the-lock", px=60_000)
    try:
        time.sleep(1.5)  # the manager's next lookups fail to renew: nothing is dispatched any more
        pg.goto(f"{dash.url}/tasks")
        pg.fill("#task-list", list_id)
        pg.click("#task-create")
        pg.wait_for_selector("#flash.ok")
        task_id = re.search(r"task ([0-9a-f-]{36}) queued", pg.locator("#flash").inner_text()).group(1)  # type: ignore[union-attr]
        row = pg.locator("table.history tbody tr", has_text=task_id)
        assert row.locator(".status").inner_text() == "pending"
        assert int(pg.locator("#queue-length").inner_text().replace(",", "")) >= 1
        row.locator("button.cancel").click()
        pg.wait_for_selector("#flash.ok")
        assert f"task {task_id} cancelled" in pg.locator("#flash").inner_text()
        assert pg.locator("table.history tbody tr", has_text=task_id).locator(".status").inner_text() == "cancelled"
        task = httpx.get(f"{dash.manager}/1/tasks/{task_id}", headers=dash.admin).json()
        assert task["status"] == "cancelled" and task["error"]["error_code"] == 26106
        # cancelling it again: the Manager's refusal is shown, nothing changes
        r = httpx.delete(f"{dash.url}/data/tasks/{task_id}", headers=dash.admin)
        assert r.status_code == 409 and r.json()["error_code"] == 26205
    finally:
        dash.redis.delete(dash.keys.master_lock)


# ---------------------------------------------------------------------------------------------------- paging
def test_paging_with_1000_lists_and_10000_tasks(dash: Dash, page: object, database_url: str, shots: Path) -> None:
    pg = page
    api = new_client(dash.services)
    account_id = api.get("/1/account").json()["account_id"]

    created = datetime.now(UTC) - timedelta(days=1)

    async def lists() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.copy_records_to_table(
                "lists", columns=["list_id", "account_id", "user_data", "create_time"],
                records=[(uuid.uuid4(), uuid.UUID(account_id), f"bulk {i:04d}", created + timedelta(seconds=i))
                         for i in range(1000)])
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # playwright's sync API keeps a loop running in this thread
        pool.submit(asyncio.run, lists()).result()
    # 10,000 finished tasks, written as the Manager's own records (facedex.manager.tasks.Task) in the dashboard's prefix
    base = time.time() - 86_400
    pipe = dash.redis.pipeline(transaction=False)
    for i in range(10_000):
        failed = i % 10 == 0
        task = Task(str(uuid.uuid4()), str(uuid.uuid4()), 1, "background", status="failed" if failed else "success",
                    progress=1.0, create_time=base + i, end_time=base + i + 1,
                    error_code=26104 if failed else 0, error_detail="build process died" if failed else "")
        pipe.hset(dash.keys.task(task.task_id), mapping=task.to_redis())
        pipe.zadd(dash.keys.tasks, {task.task_id: task.create_time})
    pipe.execute()

    pg.goto(f"{dash.url}/lists?account_id={account_id}")
    assert pg.locator("table.lists tbody tr").count() == 50
    assert pg.locator(".page-no").inner_text() == "page 1 of 20 (1,000 rows)"
    assert pg.locator("table.lists tbody tr").first.inner_text().count("bulk 0000") == 1
    pg.locator("a.page-link", has_text="last").click()
    pg.wait_for_url(re.compile(r".*page=20.*"))
    assert pg.locator(".page-no").inner_text() == "page 20 of 20 (1,000 rows)"
    assert "bulk 0999" in pg.locator("table.lists tbody tr").last.inner_text()

    pg.goto(f"{dash.url}/tasks")
    all_tasks = dash.redis.zcard(dash.keys.tasks)
    assert all_tasks >= 10_000
    assert f"({all_tasks:,} tasks in all)" in pg.locator("main").inner_text()
    assert pg.locator("table.history tbody tr").count() == 50
    pg.screenshot(path=str(shots / "dashboard-tasks-paged.png"), full_page=False)
    pg.locator("a.page-link", has_text="next").click()
    pg.wait_for_url(re.compile(r".*page=2.*"))
    assert pg.locator(".page-no").inner_text().startswith("page 2 of ")
    # the failed ones, with their error codes, by the status filter; deep pages through the JSON endpoint
    pg.goto(f"{dash.url}/tasks?status=failed&page=3")
    assert pg.locator("table.history tbody tr").count() == 50
    assert pg.locator("table.history tbody tr").first.locator("td").nth(5).inner_text() == "26104: build process died"
    r = httpx.get(f"{dash.url}/data/tasks", params={"page": 200}, headers=dash.admin)
    assert r.status_code == 200 and len(r.json()["items"]) == 50 and r.json()["pages"] == -(-all_tasks // 50)


# ---------------------------------------------------------------------------------------------------- health
def test_health_at_a_glance_turns_red(dash: Dash, page: object, shots: Path) -> None:
    pg = page
    pg.goto(dash.url + "/")
    assert pg.locator(".overall").inner_text() == "all services healthy"
    assert pg.locator("table.health .dot.bad").count() == 0
    pg.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)
    dash.services.stop("indexer-dash")
    row = pg.locator("table.health tbody tr", has_text="indexer")
    row.locator(".dot.bad").wait_for()  # the live part turns red without a reload
    assert pg.locator(".overall").inner_text() == "something is unhealthy"
    pg.screenshot(path=str(shots / "dashboard-overview-unhealthy.png"), full_page=True)
    # a session can be ended: after logging out every page asks for the token again
    pg.click("header .logout button")
    assert pg.goto(dash.url + "/").status == 401
