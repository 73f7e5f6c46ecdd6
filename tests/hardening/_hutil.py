"""Shared by the hardening tests: the figures table and the size knob."""

from __future__ import annotations

import os
import time

ROWS: dict[str, dict] = {}
ORDER = ("tried", "host crashes", "rejected (typed)", "accepted", "child crashes contained",
         "slowest (s)", "notes")
T0 = [time.perf_counter()]


def harden_n(default: int, large: int | None = None) -> int:
    """Size of a sweep: ``default``, or when ``EDGESHIP_HARDEN_N`` is set, that number (or ``large``)."""
    v = os.environ.get("EDGESHIP_HARDEN_N")
    if not v:
        return default
    return large if large is not None else int(v)


def record(area: str, **figures) -> None:
    """Add figures to a row; numbers add up, ``slowest (s)`` keeps the max, ``notes`` append."""
    row = ROWS.setdefault(area, {})
    for k, v in figures.items():
        if k == "notes" and row.get("notes"):
            row["notes"] = f"{row['notes']}; {v}"
        elif k == "slowest (s)" and k in row:
            row[k] = max(row[k], v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k in row:
            row[k] += v
        else:
            row[k] = v
