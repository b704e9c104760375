"""The dashboard's pure parts: session cookies and the rates/percentiles it computes from /metrics text."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from facedex.dashboard import session
from facedex.dashboard.metricsview import History, parse, percentile


def test_session_cookie_is_signed_expires_and_dies_with_the_token() -> None:
    cookie = session.issue("admin-1", ttl_s=60)
    assert "admin-1" not in cookie and session.valid("admin-1", cookie)
    assert not session.valid("admin-2", cookie)  # a new admin token ends every session
    expiry, nonce, mac = cookie.split(".")
    assert not session.valid("admin-1", f"{int(expiry) + 3600}.{nonce}.{mac}")  # a longer life is not signed
    assert not session.valid("admin-1", session.issue("admin-1", ttl_s=-1))
    for bad in (None, "", "x", "1.2", "a.b.c.d"):
        assert not session.valid("admin-1", bad)


def test_rates_and_percentiles_over_the_window() -> None:
    reg = CollectorRegistry()
    hist = Histogram("facedex_http_request_duration_seconds", "", ["service", "method", "route", "status"],
                     registry=reg, buckets=(0.01, 0.1, 1))
    routes = Counter("facedex_match_route_total", "", ["route", "fallback"], registry=reg)
    history = History()
    for _ in range(10):
        hist.labels("api", "GET", "/a", "200").observe(0.005)
    history.add("api", parse(generate_latest(reg).decode()), now=100.0)
    for _ in range(20):  # the window: 20 requests between 10 and 100 ms, over two statuses
        hist.labels("api", "GET", "/a", "404" if _ % 2 else "200").observe(0.05)
    routes.labels("bruteforce", "no label").inc(6)
    history.add("api", parse(generate_latest(reg).decode()), now=110.0)
    [row] = history.routes("api")
    assert (row["total"], row["rate"], row["latency_over"]) == (30.0, 2.0, "window")
    assert row["p50_ms"] == pytest.approx(55.0)  # 10 ms + half of the (10, 100] bucket, as Prometheus interpolates
    assert history.match_routes("api") == [{"route": "bruteforce", "fallback": "no label", "total": 6.0, "rate": 0.6}]
    # since start when the window saw nothing new
    history.add("api", parse(generate_latest(reg).decode()), now=200.0)
    assert history.routes("api")[0]["latency_over"] == "since start"


def test_history_stays_bounded() -> None:
    history = History()
    sample = parse('facedex_match_route_total{route="indexed",fallback=""} 1.0\n')
    for i in range(1000):
        history.add("proxy", sample, now=float(i))
    assert len(history.scrapes["proxy"]) == history.keep
    for _ in range(100):  # a page polled faster than min_gap_s replaces its last scrape
        history.add("proxy", sample, now=time.monotonic() + 5000)
    assert len(history.scrapes["proxy"]) == history.keep


def test_percentile_edges() -> None:
    assert percentile([], 0.5) is None
    assert percentile([(0.1, 0), (float("inf"), 0)], 0.5) is None
    assert percentile([(0.1, 0), (float("inf"), 4)], 0.99) == 0.1  # all beyond the last bound: its lower edge
