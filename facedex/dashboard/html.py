"""Server-rendered HTML: the page frame, tables, pagers, and each page's live part.

Everything interpolated is escaped here (``e``); the only script is
``static/dashboard.js``, which re-fetches a page's live part (``X-Fragment: 1``).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import urlencode

NAV = (("/", "Overview"), ("/lists", "Lists"), ("/tasks", "Tasks"), ("/matchers", "Matchers"),
       ("/matching", "Matching"), ("/search", "Search"))


def e(value: object) -> str:
    return escape("—" if value is None else str(value))


def page(title: str, active: str, body: str) -> str:
    nav = "".join(f'<a href="{href}"{" class=active" if href == active else ""}>{name}</a>' for href, name in NAV)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>facedex · {e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/dashboard.css"><script src="/static/dashboard.js" defer></script></head>
<body><header><strong>facedex</strong><nav>{nav}</nav>
<form method="post" action="/logout" class="logout"><button>Log out</button></form></header>
<main><h1>{e(title)}</h1>{body}</main></body></html>"""


def live(fragment: str, period_ms: int = 2000) -> str:
    return f'<div id="live" data-poll="{period_ms}">{fragment}</div>'


LOGIN_STYLE = ("body{font-family:system-ui,sans-serif;display:flex;justify-content:center;margin-top:12vh;background:#f4f5f7}"
               "form{background:#fff;padding:2em;border-radius:6px;box-shadow:0 1px 4px #0002;min-width:320px}"
               "input{width:100%;padding:.5em;margin:.5em 0 1em;box-sizing:border-box}.error{color:#b00020}")


def login(next_path: str, error: str | None = None) -> str:
    message = f'<p class="error" id="login-error">{e(error)}</p>' if error else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>facedex · log in</title><style>{LOGIN_STYLE}</style></head>
<body><form method="post" action="/login"><h1>facedex dashboard</h1>{message}
<label for="token">Admin token</label><input type="password" id="token" name="token" autocomplete="current-password" autofocus>
<input type="hidden" name="next" value="{e(next_path)}"><button type="submit">Log in</button></form></body></html>"""


def table(headers: list[str], rows: list[list[str]], cls: str = "") -> str:
    if not rows:
        return '<p class="empty">nothing here</p>'
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def pager(path: str, data: dict[str, Any], **params: Any) -> str:
    page_no, pages = int(data["page"]), int(data["pages"])
    kept = {k: v for k, v in params.items() if v not in (None, "")}

    def link(n: int, label: str) -> str:
        return f'<a href="{e(path + "?" + urlencode({**kept, "page": n}))}" class="page-link" data-page="{n}">{label}</a>'

    parts = [link(1, "« first")] if page_no > 1 else []
    if page_no > 1:
        parts.append(link(page_no - 1, "‹ prev"))
    parts.append(f'<span class="page-no">page {page_no} of {pages} ({data["total"]:,} rows)</span>')
    if page_no < pages:
        parts += [link(page_no + 1, "next ›"), link(pages, "last »")]
    return f'<div class="pager">{" ".join(parts)}</div>'


def age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def size(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def compact(value: Any, limit: int = 400) -> str:
    """A dict as short JSON, whole in a tooltip-less <details> when long."""
    if value in (None, {}, []):
        return "—"
    text = json.dumps(value, default=str, separators=(", ", ": "))
    if len(text) <= 80:
        return f"<code>{e(text)}</code>"
    return f"<details><summary><code>{e(text[:60])}…</code></summary><code>{e(text[:limit])}</code></details>"


def build_button(list_id: str, back: str) -> str:
    return (f'<form method="post" action="/tasks/create" class="inline"><input type="hidden" name="list_id" value="{e(list_id)}">'
            f'<input type="hidden" name="back" value="{e(back)}"><button class="build" data-list="{e(list_id)}">Build index</button></form>')


def cancel_button(task_id: str, back: str) -> str:
    return (f'<form method="post" action="/tasks/{e(task_id)}/cancel" class="inline"><input type="hidden" name="back" value="{e(back)}">'
            f'<button class="cancel" data-task="{e(task_id)}">Cancel</button></form>')


def progress(value: Any) -> str:
    p = float(value or 0)
    return f'<progress max="1" value="{p:.3f}"></progress> <span class="pct">{p * 100:.0f}%</span>'


def status(text: str) -> str:
    return f'<span class="status {e(text)}">{e(text)}</span>'


def flash(message: str | None, ok: bool = True) -> str:
    return f'<p class="flash {"ok" if ok else "bad"}" id="flash">{e(message)}</p>' if message else ""


# ------------------------------------------------------------------ page fragments
def lists_fragment(data: dict[str, Any], back: str) -> str:
    rows = []
    for it in data["items"]:
        idx = it["index"]
        if idx:
            index_cell = (f'<span class="kind">{e(idx["kind"])}</span> <code class="index-id">{e(idx["index_id"])}</code><br>'
                          f'{e(idx["faces"])} faces, built {age(idx["age_s"])} ago, lag <span class="lag">{e(idx["lag"])}</span> changes'
                          f'<br>params {compact(idx["params"])}<br>calibration {compact(idx["calibration"])}'
                          + (f'<br><span class="warn">{e(idx["warning"])}</span>' if idx.get("warning") else ""))
        else:
            index_cell = '<span class="none">no index</span>'
        served = (" ".join(f'<span class="served">{e(m)}</span>' for m in it["matchers"])
                  if it["matchers"] else '<span class="none">brute force</span>')
        rows.append([
            f'<code class="list-id">{e(it["list_id"])}</code><br><small>{e(it["user_data"])}</small>',
            f'<a href="/lists?account_id={e(it["account_id"])}">{e(it["account_name"])}</a>',
            f'<span class="faces">{int(it["faces"]):,}</span>', e(", ".join(map(str, it["descriptor_versions"])) or "—"),
            index_cell, served, build_button(it["list_id"], back),
        ])
    err = f'<p class="flash bad">indexes unavailable: {e(data["indexes_error"])}</p>' if data.get("indexes_error") else ""
    return err + table(["list", "account", "faces", "versions", "newest index", "served by", ""], rows, "lists") + pager(
        "/lists", data, account_id=data.get("account_id"))


def _task_row(t: dict[str, Any], back: str, with_cancel: bool) -> list[str]:
    error = t.get("error") or {}
    cells = [f'<code class="task-id">{e(t.get("task_id"))}</code>', f'<code>{e(t.get("list_id"))}</code>', e(t.get("type")),
             status(str(t.get("status"))), progress(t.get("progress")),
             e(f'{error.get("error_code")}: {error.get("detail")}') if error else "", e(t.get("index_id") or "")]
    final = t.get("status") in ("success", "failed", "cancelled")
    cells.append(cancel_button(str(t.get("task_id")), back) if with_cancel and not final else "")
    return cells


def tasks_fragment(data: dict[str, Any], back: str) -> str:
    headers = ["task", "list", "type", "status", "progress", "error", "index", ""]
    q = data["queue"]
    queue = (f'<p class="queue">queue: <strong id="queue-length">{q["length"]:,}</strong> pending'
             + (f'; next: {", ".join(f"<code>{e(i)}</code>" for i in q["head"][:5])}' if q["head"] else "") + "</p>")
    running = table(headers, [_task_row(t, back, True) for t in data["running"]], "running")
    history = table(headers, [_task_row(t, back, True) for t in data["items"]], "history")
    return (queue + "<h2>Running builds</h2>" + running + f"<h2>History <small>({data['all_tasks']:,} tasks in all)</small></h2>"
            + history + pager("/tasks", data, status=data.get("status"), list_id=data.get("list_id")))


def matchers_fragment(data: dict[str, Any]) -> str:
    mrows = []
    for m in data["matchers"]:
        lic = "yes" if m.get("licensed") else f'no: {m.get("license_reason")}'
        mrows.append([e(m.get("matcher_id") or "—"), e(m["url"]), f'<span class="loaded">{e(m.get("loaded"))}</span>',
                      size(m.get("memory_bytes")), e(m.get("served")), e(lic) if "error" not in m else
                      f'<span class="bad">{e(m["error"])}</span>'])
    master = data["master"] or {}
    lic = data["license"] or {}
    lic_text = (f'valid, licensee {e(lic.get("licensee"))}, features {e(", ".join(lic.get("features") or []))}, '
                f'expires {e(lic.get("expires"))}' if lic.get("valid") else f'not valid: {e(lic.get("reason") or lic.get("error"))}')
    irows = [[f'<code class="list-id">{e(i.get("list_id"))}</code>', e(i.get("matcher")), f'<code>{e(i.get("index_id"))}</code>',
              e(i.get("faces")), e(i.get("change_seq")), e(i["stream"].get("length")), e(i["stream"].get("lag")),
              e(i["stream"].get("pending"))] for i in data["items"]]
    return (f'<p>master Index Manager: <strong id="master">{e(master.get("master") or master.get("error"))}</strong></p>'
            f'<p>license: <span id="license">{lic_text}</span></p>'
            + table(["matcher", "url", "loaded", "memory", "requests served", "licensed"], mrows, "matchers")
            + "<h2>Live labels in Redis, by matcher</h2>"
            + table(["matcher", "lists served"], [[f'<span class="label-matcher">{e(m)}</span>', f"{n:,}"]
                                                  for m, n in data.get("labels_by_matcher", {}).items()], "labels")
            + "<h2>Loaded indexes</h2>"
            + table(["list", "matcher", "index", "faces", "applied change", "stream length", "stream lag", "pending"], irows, "loaded")
            + pager("/matchers", data))


def metrics_fragment(data: dict[str, Any]) -> str:
    mr = [[e(r["route"]), e(r["fallback"] or "—"), f'{r["rate"]:.2f}', f'{r["total"]:,.0f}'] for r in data["match_routes"]]
    out = [f'<p>rates over the last {data["window_s"]:.0f} s of this page\'s polling; percentiles over the same window '
           "(or since the service started when it saw no request)</p><h2>Matching routes (proxy)</h2>",
           table(["route", "fallback reason", "req/s", "total"], mr, "match-routes")]
    for s in data["services"]:
        out.append(f'<h2>{e(s["service"])} <small>{size(s.get("memory_bytes"))}</small></h2>')
        if s.get("error"):
            out.append(f'<p class="bad">{e(s["error"])}</p>')
            continue
        out.append(table(["method", "route", "req/s", "total", "p50 ms", "p95 ms", "p99 ms", "latency over"],
                         [[e(r["method"]), f'<code>{e(r["route"])}</code>', f'{r["rate"]:.2f}', f'{r["total"]:,.0f}',
                           e(r["p50_ms"]), e(r["p95_ms"]), e(r["p99_ms"]), e(r["latency_over"])] for r in s["routes"][:30]],
                         "routes"))
    return "".join(out)


def health_fragment(data: dict[str, Any]) -> str:
    rows = []
    for s in data["services"]:
        detail = s["detail"]
        checks = detail.get("checks") if isinstance(detail, dict) else detail
        rows.append([f'<span class="dot {"ok" if s["ok"] else "bad"}"></span> {e(s["service"])}', e(s["url"]),
                     e(s["status"]), compact(checks)])
    overall = '<p class="overall ok">all services healthy</p>' if data["ok"] else '<p class="overall bad">something is unhealthy</p>'
    return overall + table(["service", "url", "HTTP", "checks"], rows, "health")


def search_form(list_id: str = "", face_id: str = "", limit: int = 10) -> str:
    return f"""<form method="post" action="/search" enctype="multipart/form-data" class="search">
<label>List id <input name="list_id" id="search-list" value="{e(list_id)}" required size="38"></label>
<label>Face id <input name="face_id" id="search-face" value="{e(face_id)}" size="38"></label>
<label>or a photo <input type="file" name="photo" accept="image/jpeg,image/png,image/webp"></label>
<label>Limit <input name="limit" type="number" min="1" max="1000" value="{limit}"></label>
<button type="submit" id="search-go">Search</button></form>"""


def search_results(result: dict[str, Any] | None) -> str:
    if result is None:
        return ""
    if not result["ok"]:
        err = result.get("error")
        text = f'{err.get("error_code")}: {err.get("detail")}' if isinstance(err, dict) else str(err)
        return f'<p class="flash bad" id="search-error">HTTP {e(result.get("status"))}: {e(text)}</p>'
    rows = [[str(i + 1), f'<code class="hit-face">{e(h["face_id"])}</code>', f'<span class="similarity">{h["similarity"]:.4f}</span>']
            for i, h in enumerate(result["hits"])]
    why = f', fallback: {e(result["fallback_reason"])}' if result.get("fallback_reason") else ""
    return (f'<p id="search-route">route: <strong>{e(result["route"])}</strong>{why}; list size {e(result["list_size"])}</p>'
            + table(["rank", "face", "similarity"], rows, "hits"))
