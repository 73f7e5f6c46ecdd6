"""``edgeship bench``: the fields of TFLite's benchmark_model, through the runtime."""

from __future__ import annotations

import os
import resource
import sys
import time

import numpy as np

from . import progress


def _peak_rss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _sample_input(model, batch: int) -> dict:
    """Real samples from the bundle's calibration.npz when present, else zeros."""
    bundle = getattr(model, "bundle_dir", None)
    inputs = model.inputs
    if bundle and len(inputs) == 1:
        path = os.path.join(bundle, "calibration.npz")
        if os.path.isfile(path):
            with np.load(path, allow_pickle=False) as z:
                if "x" in z and z["x"].shape[0] > 0:
                    x = z["x"].astype(np.float32)
                    idx = np.arange(batch) % x.shape[0]
                    return {inputs[0].name: x[idx]}
    feeds = {}
    for spec in inputs:
        shape = [batch] + [1 if d in (None, -1) else int(d) for d in list(spec.shape)[1:]]
        feeds[spec.name] = np.zeros(shape, np.float32)
    return feeds


def bench_model(path: str, *, artifact=None, runs: int = 100, warmup: int = 10, threads=None, batch: int = 1,
                load_kwargs: dict | None = None) -> dict:
    """Load ``path`` through :func:`edgeship.runtime.load` and time it.

    Returns init time, first inference, mean/std/p50/p90/p99 latency (ms),
    throughput and the process's peak RSS.
    """
    from edgeship import runtime

    t0 = time.perf_counter()
    model = runtime.load(path, artifact=artifact, threads=threads, **(load_kwargs or {}))
    init_ms = (time.perf_counter() - t0) * 1e3
    try:
        feeds = _sample_input(model, batch)
        t0 = time.perf_counter()
        model.run(feeds)
        first_ms = (time.perf_counter() - t0) * 1e3
        for _ in range(warmup):
            model.run(feeds)
        times = []
        for _ in progress.progress(range(runs), total=runs, desc="bench"):
            t0 = time.perf_counter()
            model.run(feeds)
            times.append((time.perf_counter() - t0) * 1e3)
        t = np.asarray(times)
        art = getattr(model, "artifact", None)
        return {
            "path": os.path.abspath(path),
            "artifact": (art or {}).get("file", os.path.basename(path)) if isinstance(art, dict) else os.path.basename(path),
            "backend": model.info.to_dict(),
            "threads": threads,
            "batch": batch,
            "runs": runs,
            "warmup": warmup,
            "init_ms": init_ms,
            "first_ms": first_ms,
            "mean_ms": float(t.mean()),
            "std_ms": float(t.std()),
            "min_ms": float(t.min()),
            "p50_ms": float(np.percentile(t, 50)),
            "p90_ms": float(np.percentile(t, 90)),
            "p99_ms": float(np.percentile(t, 99)),
            "throughput_per_s": float(1e3 * batch / t.mean()),
            "peak_rss_bytes": _peak_rss_bytes(),
        }
    finally:
        model.close()
