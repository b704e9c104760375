"""What the dashboard shows, gathered from the Faces DB, Redis and the services' HTTP APIs, one page at a time.

Every view is paged on the server (lists in SQL, tasks by the Index Manager,
loaded indexes here), so 1,000s of lists or 10,000s of tasks cost one page.
Index metadata is read defensively (``.get``): newer builds may add fields,
and what is there is shown.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import redis.asyncio as aredis

from facedex.config import Settings
from facedex.dashboard.metricsview import History, parse
from facedex.dashboard.upstream import Upstream
from facedex.errors import Errors, FacedexError
from facedex.faces.store import FacesStore
from facedex.redis.keys import Keys
from facedex.services import SERVICES

TASK_STATUSES = ("pending", "indexing", "success", "failed", "cancelled")


def pages(total: int, page: int, page_size: int) -> dict[str, int]:
    return {"page": page, "page_size": page_size, "total": total, "pages": max(1, math.ceil(total / page_size))}


def _age_s(iso: object) -> float | None:
    try:
        return max(0.0, time.time() - datetime.fromisoformat(str(iso)).astimezone(UTC).timestamp())
    except (TypeError, ValueError):
        return None


def index_summary(meta: dict[str, Any] | None, list_head: int) -> dict[str, Any] | None:
    """The fields of an index's meta.json an operator needs, whatever version of the build wrote it."""
    if not meta:
        return None
    params = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    return {
        "index_id": meta.get("index_id"),
        "kind": meta.get("kind") or meta.get("index_kind") or params.get("kind") or "hnsw",
        "params": params,
        "calibration": meta.get("calibration"),
        "warning": meta.get("warning") or meta.get("warnings"),
        "faces": meta.get("count"),
        "descriptor_version": meta.get("descriptor_version"),
        "create_time": meta.get("create_time"),
        "age_s": _age_s(meta.get("create_time")),
        "change_seq": meta.get("change_seq"),
        "lag": None if meta.get("change_seq") is None else max(0, list_head - int(meta["change_seq"])),
        "build_seconds": meta.get("build_seconds"),
    }


class Dashboard:
    def __init__(self, settings: Settings, store: FacesStore, redis: aredis.Redis, upstream: Upstream) -> None:
        self.s = settings
        self.store = store
        self.redis = redis
        self.keys = Keys(settings.redis_prefix)
        self.up = upstream
        self.history = History()
        self._tokens: dict[uuid.UUID, str] = {}  # account -> the dashboard's API token for it (search)
        self._relevant: tuple[float, dict[str, dict[str, Any]]] = (0.0, {})
        self._versions: dict[uuid.UUID, tuple[int, list[int]]] = {}  # list -> (change_seq, versions), bounded below

    # ------------------------------------------------------------ where things are
    def services(self) -> dict[str, str]:
        """Service name -> URL for every service this deployment runs (besides the dashboard)."""
        out = {name: svc.address(self.s).url for name, svc in SERVICES.items() if name != "dashboard" and svc.in_up(self.s)}
        for url in self.matchers():
            if url.rstrip("/") not in out.values():
                out[f"matcher {url}"] = url.rstrip("/")
        return out

    def matchers(self) -> list[str]:
        return self.s.dashboard_ui.matchers or [self.s.matcher.url]

    # ------------------------------------------------------------ lists
    async def _relevant_indexes(self) -> dict[str, dict[str, Any]]:
        """The newest index of each list, from the Index Manager (cached 2 s: one storage listing serves a page)."""
        at, cached = self._relevant
        if time.monotonic() - at < 2.0:
            return cached
        metas = await self.up.json("GET", f"{self.s.manager.url}/1/indexes/relevant", role="admin")
        relevant = {str(m.get("list_id")): m for m in metas if isinstance(m, dict)}
        self._relevant = (time.monotonic(), relevant)
        return relevant

    async def live_labels(self) -> dict[str, list[str]]:
        """list_id -> matcher ids with a live label (the proxy's own test: score = expiry, Redis server time)."""
        sec, usec = await self.redis.time()
        now_ms = sec * 1000 + usec // 1000
        out: dict[str, list[str]] = {}
        for member in await self.redis.zrangebyscore(self.keys.labels, now_ms, "+inf"):
            label = Keys.labels_member_label(str(member))  # <list_id>:<descriptor version>
            list_id, matcher_id = label.split(":", 1)[0], str(member)[len(label) + 1:]
            if matcher_id not in out.setdefault(list_id, []):
                out[list_id].append(matcher_id)
        return out

    async def _list_versions(self, rows: list[Any]) -> dict[uuid.UUID, list[int]]:
        """Descriptor versions per list, probed again only when the list changed (a big list's probe is not free)."""
        stale = [r["list_id"] for r in rows if self._versions.get(r["list_id"], (-1, []))[0] != r["change_seq"]]
        if stale:
            fresh = await self.store.list_versions(stale)
            if len(self._versions) > 10_000:
                self._versions.clear()
            heads = {r["list_id"]: r["change_seq"] for r in rows}
            for list_id in stale:
                self._versions[list_id] = (heads[list_id], fresh.get(list_id, []))
        return {r["list_id"]: self._versions[r["list_id"]][1] for r in rows}

    async def lists(self, account_id: uuid.UUID | None, page: int, page_size: int) -> dict[str, Any]:
        total, rows = await self.store.all_lists_page(account_id, page, page_size)
        versions, labels = await asyncio.gather(self._list_versions(rows), self.live_labels())
        error = None
        try:
            relevant = await self._relevant_indexes()
        except FacedexError as exc:
            relevant, error = {}, exc.detail
        items = []
        for r in rows:
            list_id = str(r["list_id"])
            items.append({
                "list_id": list_id, "account_id": str(r["account_id"]), "account_name": r["account_name"],
                "user_data": r["user_data"], "faces": r["face_count"], "change_seq": r["change_seq"],
                "create_time": r["create_time"].isoformat(), "descriptor_versions": versions.get(r["list_id"], []),
                "index": index_summary(relevant.get(list_id), r["change_seq"]),
                "matchers": sorted(labels.get(list_id, [])),
            })
        return {**pages(total, page, page_size), "account_id": str(account_id) if account_id else None,
                "items": items, "indexes_error": error}

    # ------------------------------------------------------------ tasks
    async def tasks(self, status: str | None, list_id: uuid.UUID | None, page: int, page_size: int) -> dict[str, Any]:
        params: dict[str, Any] = {"page": page, "page_size": page_size}
        if status:
            params["status"] = status
        if list_id:
            params["list_id"] = str(list_id)
        url = f"{self.s.manager.url}/1/tasks"
        history, running_ids, total, queue_len, queue_head = await asyncio.gather(
            self.up.json("GET", url, role="admin", params=params),
            self.redis.smembers(self.keys.indexing),  # builds in flight: a small set, not a scan of every task
            self.redis.zcard(self.keys.tasks),
            self.redis.llen(self.keys.queue),
            self.redis.lrange(self.keys.queue, 0, 9),
        )
        running = [t for t in await asyncio.gather(*(self._safe(self.up.json("GET", f"{url}/{i}", role="admin"))
                                                       for i in sorted(running_ids)[:50])) if "error" not in t]
        filtered = bool(status or list_id)
        # with a filter the Manager cannot count matches cheaply: offer the next page while pages come back full
        shown_total = (page - 1) * page_size + len(history) + (1 if len(history) == page_size else 0) if filtered else total
        return {**pages(shown_total, page, page_size), "all_tasks": total, "filtered": filtered,
                "status": status, "list_id": str(list_id) if list_id else None,
                "queue": {"length": queue_len, "head": queue_head}, "running": running, "items": history}

    async def create_task(self, list_id: uuid.UUID) -> dict[str, Any]:
        status, body = await self.up.request("POST", f"{self.s.manager.url}/1/tasks", role="admin", json={"list_id": str(list_id)})
        return {"status": status, "body": body}

    async def cancel_task(self, task_id: str) -> dict[str, Any]:
        status, body = await self.up.request("DELETE", f"{self.s.manager.url}/1/tasks/{task_id}", role="admin")
        return {"status": status, "body": body}

    # ------------------------------------------------------------ matchers
    async def _stream_backlog(self, list_id: str, version: int) -> dict[str, Any]:
        """XINFO GROUPS (lag, pending) and XPENDING's summary of the matchers' consumer group on the label's stream."""
        stream = self.keys.stream(Keys.matching_label(list_id, version))
        out: dict[str, Any] = {"length": await self.redis.xlen(stream), "lag": None, "pending": 0, "consumers": {}}
        try:
            for group in await self.redis.xinfo_groups(stream):
                if group.get("name") == Keys.MATCHER_GROUP:
                    out["lag"] = group.get("lag")
                    summary = await self.redis.xpending(stream, Keys.MATCHER_GROUP)
                    out["pending"] = summary.get("pending", 0)
                    out["consumers"] = {str(c["name"]): int(c["pending"]) for c in summary.get("consumers") or []}
        except aredis.ResponseError:  # no stream yet
            pass
        return out

    async def matchers_view(self, page: int, page_size: int) -> dict[str, Any]:
        async def one(url: str) -> dict[str, Any]:
            row: dict[str, Any] = {"url": url}
            try:
                state, metrics = await asyncio.gather(self.up.json("GET", f"{url}/1/indexes"), self.scrape(url, url))
                row.update(state if isinstance(state, dict) else {})
                row["memory_bytes"] = metrics.get(("process_resident_memory_bytes", ()))
            except FacedexError as exc:
                row["error"] = exc.detail
            return row

        matchers = await asyncio.gather(*(one(url.rstrip("/")) for url in self.matchers()))
        loaded = [(m.get("matcher_id") or m["url"], idx) for m in matchers for idx in m.get("indexes") or []]
        loaded.sort(key=lambda pair: (str(pair[1].get("list_id")), str(pair[0])))
        window = loaded[(page - 1) * page_size: page * page_size]
        default = self.s.default_descriptor_version
        backlogs = await asyncio.gather(*(self._stream_backlog(str(idx.get("list_id")), int(idx.get("descriptor_version") or default))
                                          for _, idx in window))
        for m in matchers:
            m["loaded"] = len(m.pop("indexes", None) or [])
        seen: dict[str, int] = {}
        for ids in (await self.live_labels()).values():
            for matcher_id in ids:
                seen[matcher_id] = seen.get(matcher_id, 0) + 1
        master, license_ = await asyncio.gather(
            self._safe(self.up.json("GET", f"{self.s.manager.url}/1/master", role="admin")),
            self._safe(self.up.json("GET", f"{self.s.licenses.url}/1/license")),
        )
        return {**pages(len(loaded), page, page_size), "matchers": matchers, "master": master, "license": license_,
                "labels_by_matcher": dict(sorted(seen.items())),
                "items": [{"matcher": mid, **idx, "stream": b} for (mid, idx), b in zip(window, backlogs, strict=True)]}

    @staticmethod
    async def _safe(coro: Any) -> Any:
        try:
            return await coro
        except FacedexError as exc:
            return {"error": exc.detail}

    # ------------------------------------------------------------ metrics and health
    async def scrape(self, name: str, url: str) -> dict[Any, float]:
        status, text = await self.up.request("GET", f"{url}/metrics")
        if status != 200 or not isinstance(text, str):
            raise FacedexError(Errors.DASHBOARD_UPSTREAM, f"{url}/metrics answered {status}")
        sample = parse(text)
        self.history.add(name, sample)
        return sample

    async def metrics(self) -> dict[str, Any]:
        services = self.services()

        async def one(name: str, url: str) -> dict[str, Any]:
            try:
                await self.scrape(name, url)
            except FacedexError as exc:
                return {"service": name, "error": exc.detail, "routes": []}
            return {"service": name, "routes": self.history.routes(name),
                    "memory_bytes": self.history.value(name, "process_resident_memory_bytes")}

        rows = await asyncio.gather(*(one(n, u) for n, u in services.items()))
        return {"services": list(rows), "match_routes": self.history.match_routes("proxy"),
                "window_s": self.history.window_s}

    async def health(self) -> dict[str, Any]:
        async def one(name: str, url: str) -> dict[str, Any]:
            try:
                status, body = await self.up.request("GET", f"{url}/healthcheck")
            except FacedexError as exc:
                return {"service": name, "url": url, "ok": False, "status": None, "detail": exc.detail}
            ok = status == 200 and isinstance(body, dict) and body.get("status") == "ok"
            return {"service": name, "url": url, "ok": ok, "status": status, "detail": body}

        rows = await asyncio.gather(*(one(n, u) for n, u in self.services().items()))
        return {"ok": all(r["ok"] for r in rows), "services": list(rows)}

    # ------------------------------------------------------------ search
    async def _token_for(self, account_id: uuid.UUID) -> str:
        """The dashboard matches as the list's own account (the API has no admin matching): one token per account,
        created in the Faces DB on first use and kept for this process's lifetime."""
        token = self._tokens.get(account_id)
        if token is None:
            created = await self.store.create_token(account_id, "dashboard")  # the operator's own: not counted against the cap
            token = self._tokens[account_id] = created.token  # type: ignore[assignment]
        return token

    async def search(self, list_id: uuid.UUID, face_id: uuid.UUID | None, photo: bytes | None, limit: int) -> dict[str, Any]:
        account_id = await self.store.list_account(list_id)  # 12001 when there is no such list
        if face_id is not None:
            reference: dict[str, Any] = {"face_id": str(face_id)}
        elif photo:
            reference = {"image": {"data": base64.b64encode(photo).decode()}}
        else:
            raise FacedexError(Errors.VALIDATION, "give a face id or a photo")
        body = {"references": [reference], "candidates": {"list_id": str(list_id), "limit": limit}}
        status, answer = await self.up.request(
            "POST", f"{self.s.api.url}/1/matcher/faces", role="account", token=await self._token_for(account_id), json=body
        )
        if status != 200:
            return {"ok": False, "status": status, "error": answer, "hits": []}
        hits = [h for m in answer.get("matches", []) for h in m.get("results", [])]
        return {"ok": True, "route": answer.get("route"), "fallback_reason": answer.get("fallback_reason"),
                "list_size": answer.get("list_size"), "hits": hits}
