"""The hops of one match, timed: the ``Server-Timing`` header and the per-hop histograms.

Why: most of a match's time is spent between the services, not in them (issue 12). Each service times
its own part with ``time.perf_counter`` and passes it on in the msgpack answer (``wire.MatchResponse.timings``,
hop name -> milliseconds); the proxy and then the API add theirs, so the API's answer carries every hop.
The hops are disjoint, so they add up to about ``total``:

- ``parse``: API: reading and validating the body (JSON or msgpack)
- ``refs``: API: reference resolution (descriptors decoded, face ids read from the Faces DB, photos extracted)
- ``proxy``: the API -> proxy -> API HTTP hop: the API's call minus everything the proxy reported
- ``route``: proxy: its own work (decode, identity check, license and backlog checks, XADD, a preferred
  route that failed before the fallback)
- ``queue``: indexed: time in the list's Redis stream before the Indexed Matcher read it (wall clocks of
  proxy and matcher; exact on one machine); brute force: time waiting for the list's running search
- ``fresh``: the matcher's change-head check (and the delta applied when the list changed): the part of it
  that was not hidden behind the search (both matchers search while the head is read)
- ``search``: the search itself (indexed: the code scan; brute force: the exact GEMV/GEMM)
- ``rescore``: indexed: exact re-scoring of the scan's candidates
- ``reply``: the rest of the proxy's round trip to the matcher (indexed: publish -> pub/sub -> proxy;
  brute force: the proxy -> matcher HTTP hop)
- ``total``: the API's handler, first byte of the body read to the answer built

Names are fixed (bounded metric labels); a hop a route does not have is simply absent.
"""

from __future__ import annotations

import functools
import time

from facedex.metrics import MATCH_HOP_SECONDS

PARSE, REFS, PROXY, ROUTE, QUEUE, FRESH, SEARCH, RESCORE, REPLY, TOTAL = (
    "parse", "refs", "proxy", "route", "queue", "fresh", "search", "rescore", "reply", "total",
)
HOPS = (PARSE, REFS, PROXY, ROUTE, QUEUE, FRESH, SEARCH, RESCORE, REPLY, TOTAL)
MATCHER_HOPS = (QUEUE, FRESH, SEARCH, RESCORE)  # measured by a matcher
HEADER = "Server-Timing"

Timings = dict[str, float]  # hop -> milliseconds


def ms(seconds: float) -> float:
    return seconds * 1000.0


def since(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` value)."""
    return (time.perf_counter() - started) * 1000.0


def downstream(timings: Timings | None) -> float:
    """Milliseconds of everything a callee reported (the part of a call's round trip that is not the hop itself)."""
    return sum(timings.values()) if timings else 0.0


def close_round_trip(timings: Timings | None, round_trip_ms: float) -> Timings:
    """A matcher's hops plus ``reply``: the part of the caller's round trip the matcher did not report.

    ``queue`` comes from two wall clocks; it is clamped so the hops never add up to more than the round trip.
    """
    out = dict(timings or {})
    own = sum(out.get(h, 0.0) for h in (FRESH, SEARCH, RESCORE))
    if QUEUE in out:
        out[QUEUE] = min(max(out[QUEUE], 0.0), max(round_trip_ms - own, 0.0))
    out[REPLY] = max(round_trip_ms - own - out.get(QUEUE, 0.0), 0.0)
    return out


@functools.cache
def _series(hop: str, route: str):  # type: ignore[no-untyped-def]
    """The histogram's child for (hop, route), looked up once: ``labels()`` takes a lock and builds a key per call,
    ten times per match."""
    return MATCH_HOP_SECONDS.labels(hop, route)


def observe(timings: Timings, route: str) -> None:
    """Each known hop into ``facedex_match_hop_seconds{hop, route}`` (unknown names are ignored: bounded labels)."""
    for hop in HOPS:
        if hop in timings:
            _series(hop, route).observe(timings[hop] / 1000.0)


def header(timings: Timings) -> str:
    """W3C Server-Timing: ``name;dur=ms`` entries in hop order (milliseconds, 3 decimals)."""
    return ", ".join(f"{h};dur={timings[h]:.3f}" for h in HOPS if h in timings)


def parse_header(value: str) -> Timings:
    """The hops of a Server-Timing header (for clients and the benchmark); entries without ``dur`` are skipped."""
    out: Timings = {}
    for entry in value.split(","):
        name, *params = (p.strip() for p in entry.split(";"))
        for p in params:
            key, _, val = p.partition("=")
            if key.strip().lower() == "dur":
                try:
                    out[name] = float(val.strip().strip('"'))
                except ValueError:
                    pass
    return out
