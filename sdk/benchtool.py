"""``edgeship bench``: the fields of TFLite's benchmark_model, through the runtime."""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Sequence

import numpy as np

from . import progress


def _peak_rss_bytes() -> int:
    # VmHWM is this process image's own high-water mark; Linux carries ru_maxrss over
    # fork+exec, so a child of a big parent (TensorFlow loaded) would report the parent's.
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _sample_input(model, batch: int) -> dict:
    """Real samples from the bundle's calibration.npz when present, else zeros."""
    bundle = getattr(model, "bundle_dir", None)
    inputs = model.inputs
    if bundle and len(inputs) == 1:
        path = os.path.join(bundle, "calibration.npz")
        if os.path.isfile(path) and not os.path.islink(path):
            from .errors import BundleError  # noqa: PLC0415
            from .safeio import load_npz  # noqa: PLC0415

            x = load_npz(path, ("x",), error=BundleError).get("x")  # bounded; never unpickles
            if x is not None and x.ndim >= 1 and x.shape[0] > 0:
                x = x.astype(np.float32)
                idx = np.arange(batch) % x.shape[0]
                return {inputs[0].name: x[idx]}
    feeds = {}
    for spec in inputs:
        shape = [batch] + [1 if d in (None, -1) else int(d) for d in list(spec.shape)[1:]]
        feeds[spec.name] = np.zeros(shape, np.float32)
    return feeds


def bench_model(path: str, *, artifact=None, runs: int = 100, warmup: int = 10, threads=None, batch: int = 1,
                load_kwargs: dict | None = None, backend: str | None = None) -> dict:
    """Load ``path`` through :func:`edgeship.runtime.load` and time it.

    Returns init time, first inference, mean/std/p50/p90/p99 latency (ms),
    throughput and the process's peak RSS.
    """
    from edgeship import runtime

    t0 = time.perf_counter()
    model = runtime.load(path, artifact=artifact, threads=threads, backend=backend, **(load_kwargs or {}))
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


def combinations(path: str, *, delegates: Sequence[str] = ()) -> list[dict]:
    """Every (artifact, backend[, delegate]) this machine could run for ``path``, and those it cannot, with why."""
    from edgeship import bundle as _bundle
    from edgeship import manifest as _manifest
    from edgeship.runtime import backends as _backends
    from edgeship.runtime.backends import available_backends

    avail = available_backends()
    if _bundle.is_bundle(path):
        arts = [(a["file"], a["format"]) for a in _manifest.read(path)["artifacts"]]
    else:
        arts = [(None, "onnx" if path.lower().endswith(".onnx") else "tflite")]
    combos = []
    for file, fmt in arts:
        for entry in _backends.registered(fmt):
            ok, why = avail.get(entry.name, (False, "not registered"))
            combos.append({"artifact": file, "format": fmt, "backend": entry.name, "delegate": None,
                           "skipped": None if ok else why})
            if ok and fmt == "tflite":
                for d in delegates:
                    combos.append({"artifact": file, "format": fmt, "backend": entry.name, "delegate": d, "skipped": None})
    return combos


def bench_all(path: str, *, runs: int = 100, warmup: int = 10, threads=None, batch: int = 1,
              delegates: Sequence[str] = (), timeout: float = 600) -> dict:
    """Run one bundle on everything available here, each combination in a fresh process.

    A fresh process per combination keeps each peak-RSS figure its own (the
    high-water mark of a process never goes down) and keeps one engine's state out
    of another's timings. Combinations that cannot run here are listed with why.
    """
    import json
    import subprocess

    from .isolate import child_env, python_command

    rows = []
    combos = combinations(path, delegates=delegates)
    for c in progress.progress(combos, total=len(combos), desc="bench --all"):
        row = dict(c)
        if c["skipped"]:
            rows.append(row)
            continue
        cmd = python_command() + ["-m", "edgeship.cli", "bench", path, "--runs", str(runs), "--warmup", str(warmup),
               "--batch", str(batch), "--backend", c["backend"], "--json"]
        if c["artifact"]:
            cmd += ["--artifact", c["artifact"]]
        if threads:
            cmd += ["--threads", str(threads)]
        if c["delegate"]:
            cmd += ["--delegate", c["delegate"], "--strict"]
        env = dict(child_env(), EDGESHIP_PROGRESS="0", TF_CPP_MIN_LOG_LEVEL="3")
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            row["skipped"] = f"timed out after {timeout:.0f} s"
            rows.append(row)
            continue
        if p.returncode != 0:
            lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
            row["skipped"] = (lines[-1] if lines else f"exit code {p.returncode}").replace("edgeship: error: ", "")
            rows.append(row)
            continue
        res = json.loads(p.stdout)
        info = res["backend"]
        row.update({k: res[k] for k in ("init_ms", "first_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
                                        "throughput_per_s", "peak_rss_bytes")})
        row["runs_on"] = info.get("delegate") or ", ".join(info.get("providers") or []) or info.get("device") or "cpu"
        od, ot = info.get("ops_delegated"), info.get("ops_total")
        row["ops_accelerated"] = (od / ot) if od is not None and ot else None
        row["fallback"] = bool(info.get("fallback"))
        rows.append(row)
    return {"path": os.path.abspath(path), "runs": runs, "warmup": warmup, "threads": threads, "batch": batch,
            "combinations": rows}
