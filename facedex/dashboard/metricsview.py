"""Request rates and latency percentiles from the services' own ``/metrics`` (Prometheus text).

Counters only grow, so a rate needs two scrapes: every scrape is kept (a few
minutes, bounded) and rates are taken between the newest and the oldest scrape
of the last ``window_s``. Percentiles come from histogram buckets over the same
window, or since the process started when the window saw no request.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "facedex_http_request_duration_seconds"
MATCH_ROUTE = "facedex_match_route_total"

Sample = dict[tuple[str, tuple[tuple[str, str], ...]], float]


KEPT = (REQUESTS + "_count", REQUESTS + "_bucket", MATCH_ROUTE, "process_resident_memory_bytes")


def parse(text: str) -> Sample:
    """The samples the dashboard shows, keyed by (name, sorted labels); request series summed over status (memory:
    a few hundred numbers per scrape, however many statuses a service has answered)."""
    out: Sample = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name not in KEPT:
                continue
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("status", "service")))
            out[(s.name, labels)] = out.get((s.name, labels), 0.0) + s.value
    return out


def percentile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Histogram quantile as Prometheus computes it (linear within the bucket); buckets: (upper bound, cumulative count)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = upper, count
    return lower


@dataclass
class History:
    window_s: float = 60.0
    keep: int = 25
    min_gap_s: float = 2.5  # a scrape sooner than this after the last one replaces it: memory stays bounded
    scrapes: dict[str, deque[tuple[float, Sample]]] = field(default_factory=dict)

    def add(self, service: str, sample: Sample, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        scrapes = self.scrapes.setdefault(service, deque(maxlen=self.keep))
        if len(scrapes) >= 2 and now - scrapes[-2][0] < self.min_gap_s:
            scrapes.pop()
        scrapes.append((now, sample))

    def _pair(self, service: str) -> tuple[float, Sample, Sample] | None:
        """(seconds between, older, newer) scrapes of the window, or None with fewer than two."""
        scrapes = self.scrapes.get(service)
        if not scrapes or len(scrapes) < 2:
            return None
        t_new, new = scrapes[-1]
        older = [(t, s) for t, s in scrapes if t_new - t <= self.window_s and t < t_new]
        if not older:
            return None
        t_old, old = older[0]
        return t_new - t_old, old, new

    def routes(self, service: str) -> list[dict[str, object]]:
        """Per (method, route): requests/s over the window, total requests, and p50/p95/p99 latency in ms."""
        scrapes = self.scrapes.get(service)
        if not scrapes:
            return []
        newest = scrapes[-1][1]
        pair = self._pair(service)
        rows: dict[tuple[str, str], dict[str, object]] = {}
        for (name, labels), value in newest.items():
            if not name.startswith(REQUESTS):
                continue
            lab = dict(labels)
            key = (lab.get("method", ""), lab.get("route", ""))
            row = rows.setdefault(key, {"method": key[0], "route": key[1], "total": 0.0, "rate": 0.0,
                                        "_cum": {}, "_win": {}})
            old_value = pair[1].get((name, labels), 0.0) if pair else 0.0
            if name == REQUESTS + "_count":
                row["total"] = float(row["total"]) + value  # type: ignore[arg-type]
                if pair:
                    row["rate"] = float(row["rate"]) + (value - old_value) / pair[0]  # type: ignore[arg-type]
            elif name == REQUESTS + "_bucket":
                le = float(lab["le"])
                cum: dict[float, float] = row["_cum"]  # type: ignore[assignment]
                win: dict[float, float] = row["_win"]  # type: ignore[assignment]
                cum[le] = cum.get(le, 0.0) + value
                win[le] = win.get(le, 0.0) + (value - old_value if pair else 0.0)
        out = []
        for row in rows.values():
            cum, win = row.pop("_cum"), row.pop("_win")
            use_window = sum(1 for v in win.values() if v > 0) > 0  # type: ignore[union-attr]
            buckets = list((win if use_window else cum).items())  # type: ignore[union-attr]
            row["latency_over"] = "window" if use_window else "since start"
            for q in (0.5, 0.95, 0.99):
                p = percentile(buckets, q)
                row[f"p{int(q * 100)}_ms"] = None if p is None else round(p * 1000, 2)
            row["rate"] = round(float(row["rate"]), 3)  # type: ignore[arg-type]
            out.append(row)
        return sorted(out, key=lambda r: (-float(r["total"]), str(r["route"])))  # type: ignore[arg-type]

    def match_routes(self, service: str) -> list[dict[str, object]]:
        """Matching requests by the route that answered and why a preferred route was skipped (the proxy's counter)."""
        scrapes = self.scrapes.get(service)
        if not scrapes:
            return []
        pair = self._pair(service)
        out = []
        for (name, labels), value in scrapes[-1][1].items():
            if name != MATCH_ROUTE:
                continue
            lab = dict(labels)
            rate = (value - pair[1].get((name, labels), 0.0)) / pair[0] if pair else 0.0
            out.append({"route": lab.get("route", ""), "fallback": lab.get("fallback", ""), "total": value, "rate": round(rate, 3)})
        return sorted(out, key=lambda r: -float(r["total"]))  # type: ignore[arg-type]

    def value(self, service: str, name: str) -> float | None:
        """An unlabelled sample of the newest scrape (process memory, ...)."""
        scrapes = self.scrapes.get(service)
        return scrapes[-1][1].get((name, ())) if scrapes else None
