"""Per-stage latency and FPS of a stream: what the overlay, the web page and the summary show.

Every processed frame carries its own timings (ms): ``capture``, ``wait``
(captured -> picked up), ``preprocess``, ``inference``, ``postprocess``,
``draw`` and ``latency`` (captured -> drawn). :class:`StageMeter` keeps the
recent ones (live figures), all of them (the summary's mean/p50/p95/max) and
the latency over the run (a flat trend means no queue is growing).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Mapping, Sequence

import numpy as np

__all__ = ["STAGES", "TIMING_KEYS", "StageMeter", "stage_stats", "trend_windows"]

STAGES = ("capture", "preprocess", "inference", "postprocess", "draw")
TIMING_KEYS = ("capture", "wait", "preprocess", "inference", "postprocess", "draw", "latency")
MAX_SAMPLES = 2_000_000  # per stage, for the summary (a day at 25 FPS)


def stage_stats(values: Sequence[float]) -> dict:
    """mean, p50, p95 and max of ``values`` (ms, 3 decimals); ``None`` for each when empty."""
    if not len(values):
        return {"mean": None, "p50": None, "p95": None, "max": None}
    a = np.asarray(values, np.float64)
    return {
        "mean": round(float(a.mean()), 3),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
    }


def trend_windows(trend: list, windows: int = 6) -> list:
    """Mean capture-to-result latency in ``windows`` equal slices of the run (flat = no growing queue)."""
    if not trend:
        return []
    end = trend[-1][0]
    start = trend[0][0]
    width = max((end - start) / windows, 1e-9)
    buckets: list[list] = [[] for _ in range(windows)]
    for t, lat in trend:
        buckets[min(windows - 1, int((t - start) / width))].append(lat)
    return [{"t_s": round(start + (i + 0.5) * width, 2), "latency_ms": round(float(np.mean(b)), 2), "frames": len(b)}
            for i, b in enumerate(buckets) if b]


class StageMeter:
    """Thread-safe timings of the frames a stream delivered."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done_times: deque = deque(maxlen=120)
        self._recent: dict = {k: deque(maxlen=30) for k in TIMING_KEYS}
        self._all: dict = {k: [] for k in TIMING_KEYS}
        self._trend: list = []  # (t since start, latency ms)
        self.frames = 0
        self.t_start: float | None = None
        self.t_first: float | None = None
        self.t_last: float | None = None

    def start(self) -> None:
        self.t_start = time.perf_counter()

    def record(self, t_done: float, timings: Mapping[str, float]) -> None:
        """One frame delivered at ``t_done`` (``time.perf_counter()``) with its ``timings``."""
        with self._lock:
            self.frames += 1
            if self.t_first is None:
                self.t_first = t_done
            self.t_last = t_done
            self._done_times.append(t_done)
            for k in TIMING_KEYS:
                v = timings.get(k)
                if v is not None:
                    self._recent[k].append(v)
                    if len(self._all[k]) < MAX_SAMPLES:
                        self._all[k].append(v)
            self._trend.append((t_done - (self.t_start or t_done), timings["latency"]))

    def recent_means(self) -> dict:
        """Mean ms per timing key over the last ~30 frames."""
        with self._lock:
            return {k: float(np.mean(v)) for k, v in self._recent.items() if v}

    def fps(self) -> float:
        """End-to-end frames per second over the last ~2 seconds."""
        with self._lock:
            times = [t for t in self._done_times if t >= self._done_times[-1] - 2.0] if self._done_times else []
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    def totals(self) -> dict:
        """``frames``, ``elapsed_s``, ``fps`` (first to last result), ``stages_ms`` and ``latency_trend_ms``."""
        with self._lock:
            n = self.frames
            span = (self.t_last - self.t_first) if n > 1 else 0.0
            per_stage = {k: stage_stats(self._all[k]) for k in TIMING_KEYS}
            trend = list(self._trend)
        now = time.perf_counter()
        elapsed = (self.t_last or now) - (self.t_start or now)
        return {
            "frames": n,
            "elapsed_s": round(elapsed, 3),
            "fps": round((n - 1) / span, 2) if span > 0 else 0.0,
            "stages_ms": per_stage,
            "latency_trend_ms": trend_windows(trend),
        }
