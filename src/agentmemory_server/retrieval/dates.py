"""Dates mentioned in a search query, as time windows over records' timestamps.

"What did we change on 3 March 2026?", "the deploy in July 2025", "errors in June": a query that
names a day, a month or a year is mostly about records from then. ``windows(query)`` returns
search filters (``since``/``until`` on the record timestamp, or ``months`` for a month named
without a year) that the hybrid ranker uses for one more, date-restricted ranking. A day window
runs from the day before to a week after: what happened on a day is often written down a few
days later ("yesterday", "last week").
"""

from __future__ import annotations

import calendar
import re
from datetime import date, timedelta
from typing import Any

MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
MONTHS["sept"] = 9
_M = r"(?P<month>" + "|".join(sorted(MONTHS, key=len, reverse=True)) + r")\.?"
_D = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_Y = r"(?P<year>(?:19|20)\d{2})"
PATTERNS = (
    ("day", re.compile(rf"\b{_D}\s+(?:of\s+)?{_M},?\s+{_Y}\b", re.I)),
    ("day", re.compile(rf"\b{_M}\s+{_D},?\s+{_Y}\b", re.I)),
    ("iso", re.compile(r"\b(?P<year>\d{4})-(?P<month>\d{2})-(?P<day>\d{2})\b")),
    ("month", re.compile(rf"\b{_M},?\s+{_Y}\b", re.I)),
    # A month with no year only after a preposition: "May" alone is too often the verb.
    ("bare_month", re.compile(rf"\b(?:in|during|of|since|early|late|mid)\s+{_M}\b(?!\s*,?\s*\d)", re.I)),
    ("year", re.compile(rf"\b(?:in|during|since|of)\s+{_Y}\b", re.I)),
)
DAY_BEFORE, DAYS_AFTER = 1, 7
MAX_WINDOWS = 3


def _month(text: str) -> int:
    return int(text) if text.isdigit() else MONTHS[text.lower().rstrip(".")]


def _span(first: date, last: date) -> dict[str, Any]:
    return {"since": first.isoformat(), "until": (last + timedelta(days=1)).isoformat()}


def _window(kind: str, m: re.Match) -> dict[str, Any] | None:
    try:
        if kind in ("day", "iso"):
            day = date(int(m["year"]), _month(m["month"]), int(m["day"]))
            return _span(day - timedelta(days=DAY_BEFORE), day + timedelta(days=DAYS_AFTER))
        if kind == "month":
            year, month = int(m["year"]), _month(m["month"])
            last = date(year, month, calendar.monthrange(year, month)[1])
            return _span(date(year, month, 1), last + timedelta(days=DAYS_AFTER))
        if kind == "bare_month":
            return {"months": [_month(m["month"])]}
        return _span(date(int(m["year"]), 1, 1), date(int(m["year"]), 12, 31))
    except (ValueError, KeyError):
        return None  # "31 February": not a date


def windows(query: str) -> list[dict[str, Any]]:
    """Date filters for the days, months and years a query names (most specific first)."""
    found: list[dict[str, Any]] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern in PATTERNS:
        for m in pattern.finditer(query or ""):
            if any(a < m.end() and m.start() < b for a, b in taken):
                continue  # "3 March 2026" is one day, not also a month and a year
            taken.append(m.span())
            window = _window(kind, m)
            if window and window not in found:
                found.append(window)
    return found[:MAX_WINDOWS]
