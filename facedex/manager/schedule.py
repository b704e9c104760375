"""Cron-style planning schedules: ``minute hour day month day_of_week`` (day_of_week 0-6, Sunday = 0).

Each field is ``*``, a number, a range ``a-b``, a list ``a,b``, or a step
``*/n`` / ``a-b/n`` (as LUNA LIM's ``planning_schedule``; names like ``mon``
are not supported). A schedule fires in every minute whose fields all match.
"""

from __future__ import annotations

from datetime import datetime

_BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]
_NAMES = ["minute", "hour", "day", "month", "day_of_week"]


def _field(text: str, lo: int, hi: int, name: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if step < 1:
            raise ValueError(f"{name}: step must be >= 1 in {part!r}")
        if body == "*":
            start, end = lo, hi
        elif "-" in body:
            a, b = body.split("-", 1)
            start, end = int(a), int(b)
        else:
            start = end = int(body)
            if step_text:
                end = hi
        if not (lo <= start <= end <= hi):
            raise ValueError(f"{name}: {part!r} is outside {lo}-{hi}")
        values.update(range(start, end + 1, step))
    return frozenset(values)


class Schedule:
    def __init__(self, expression: str) -> None:
        parts = expression.split()
        if len(parts) != 5:
            raise ValueError(f"a schedule has 5 fields (minute hour day month day_of_week), got {expression!r}")
        try:
            self.fields = [_field(p, lo, hi, n) for p, (lo, hi), n in zip(parts, _BOUNDS, _NAMES)]
        except ValueError as exc:
            raise ValueError(f"bad schedule {expression!r}: {exc}") from None
        self.expression = expression

    def matches(self, t: datetime) -> bool:
        dow = (t.weekday() + 1) % 7  # Python: Monday = 0; cron: Sunday = 0
        return all(v in f for v, f in zip((t.minute, t.hour, t.day, t.month, dow), self.fields))
