"""What one trial does, wherever it runs (a Ray worker or the serial loop): no Ray in here.

- :func:`pack` / :func:`unpack`: the model and data files as one tar (bytes), so a
  worker on another machine needs no shared file system;
- :func:`convert_trial`: one ``convert()`` into a temporary folder; the bundle comes
  back as tar bytes with a summary of its artifacts (bytes, accuracy, drop);
- :func:`time_bundle`: every artifact timed on each engine, each engine in a fresh
  process (``edgeship bench --json``).

A user's mistake in a trial (an :class:`~edgeship.errors.EdgeshipError`) is returned as
``{"ok": False, "error": {...}}``: it is a result of the sweep, not a failure of it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time

from edgeship.errors import EdgeshipError

__all__ = ["pack", "unpack", "convert_trial", "time_bundle", "bound_threads", "artifact_summary"]


def pack(files: dict) -> bytes:
    """``{arcname: path}`` (files or folders) as one uncompressed tar."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arc, path in files.items():
            if path:
                tar.add(path, arcname=arc, recursive=True)
    return buf.getvalue()


def unpack(blob: bytes, dest: str) -> str:
    """Extract a tar from :func:`pack` into ``dest`` (the ``data`` filter: no links out, no devices)."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        tar.extractall(dest, filter="data")
    return dest


def bound_threads(cpus: int) -> None:
    """TensorFlow, OpenMP and BLAS to at most ``cpus`` threads in this process (before TensorFlow starts)."""
    n = str(max(1, int(cpus)))
    for var in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = n
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["EDGESHIP_PROGRESS"] = "0"
    import sys  # noqa: PLC0415

    if "tensorflow" in sys.modules:  # already started in this worker: set what can still be set
        tf = sys.modules["tensorflow"]
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(n))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except (RuntimeError, AttributeError):
            pass  # TensorFlow's runtime is initialized: the environment set at its start holds


def artifact_summary(manifest: dict) -> list:
    """Per artifact: file, format, precision, io, bytes, gzip bytes, sha256 and the validation metrics."""
    vals = (manifest.get("validation") or {}).get("artifacts") or {}
    out = []
    for a in manifest.get("artifacts", []):
        v = vals.get(a["file"], {})
        acc, src = v.get("accuracy"), v.get("source_accuracy")
        out.append({
            "file": a["file"], "format": a["format"], "precision": a.get("precision"), "io": a.get("io"),
            "bytes": a.get("bytes"), "gzip_bytes": a.get("gzip_bytes"), "sha256": a.get("sha256"),
            "accuracy": acc, "source_accuracy": src, "top1_agreement": v.get("top1_agreement"),
            "drop_points": None if acc is None or src is None else round(100.0 * (src - acc), 6),
        })
    return out


def _error(exc: BaseException) -> dict:
    text = str(exc).strip()
    return {"type": type(exc).__name__, "reason": text.splitlines()[0] if text else type(exc).__name__}


def convert_trial(payload: bytes, files: dict, trial: dict, cpus: int = 1) -> dict:
    """Convert one trial (``trial``: ``id``, ``settings``, ``allow_unsafe``) from the packed model and data.

    ``files`` maps ``model``/``calib``/``eval``/``train``/``labels`` to their names inside the payload.
    Returns ``{"ok": True, "seconds", "artifacts", "warnings", "bundle_tar"}`` or
    ``{"ok": False, "error": {"type", "reason"}, "seconds"}``.
    """
    bound_threads(cpus)
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix="edgeship-trial-")
    try:
        unpack(payload, work)
        at = {k: (os.path.join(work, v) if v else None) for k, v in files.items()}
        s = dict(trial["settings"])
        labels = trial.get("labels")
        prunes = bool(s["prune"] or s["prune_structure"])  # fine-tuning data is for pruned trials only
        try:
            from edgeship.converters import convert  # noqa: PLC0415

            res = convert(
                at["model"], os.path.join(work, "bundle"), calib=at.get("calib"), eval_data=at["eval"],
                precision=s["precision"], io=s["io"], calib_method=s["calib_method"], calib_count=s["calib_count"],
                prune=s["prune"] or None, prune_structure=s["prune_structure"] or None, target=s["target"],
                formats=[s["format"]], preprocess=trial.get("preprocess"), train_data=at.get("train") if prunes else None,
                labels=at.get("labels") or (list(labels) if labels else None), seed=s["seed"],
                allow_unsafe=bool(trial.get("allow_unsafe")), name=trial["id"])
        except EdgeshipError as exc:
            return {"ok": False, "error": _error(exc), "seconds": time.perf_counter() - t0}
        bundle_tar = pack({"bundle": res.bundle})
        return {"ok": True, "seconds": time.perf_counter() - t0, "artifacts": artifact_summary(res.manifest),
                "warnings": list(res.warnings), "bundle_tar": bundle_tar}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _engines_for(fmt: str, wanted: tuple) -> list:
    """``[(engine, None) | (engine, why not)]``: the wanted engines that run ``fmt``, or the first available."""
    from edgeship.runtime.backends.registry import available_backends, registered  # noqa: PLC0415

    avail = available_backends()
    entries = [e.name for e in registered(fmt)]
    if wanted:
        return [(e, None if avail.get(e, (False,))[0] else avail.get(e, (False, "not available"))[1])
                for e in wanted if e in entries]
    first = next((e for e in entries if avail.get(e, (False,))[0]), None)
    return [(first, None)] if first else [(entries[0] if entries else "-", f"no engine for {fmt} here")]


def time_bundle(bundle_tar: bytes, timing: dict, *, timeout: float = 600) -> dict:
    """Time every artifact of the packed bundle on each engine, each in a fresh ``edgeship bench`` process.

    ``timing``: ``engines``, ``runs``, ``warmup``, ``threads``. Returns ``{"hostname", "rows": [...]}``;
    a row is ``{artifact, engine, p50_ms, p90_ms, mean_ms, init_ms, peak_rss_bytes, engine_version}``
    or ``{artifact, engine, skipped: why}``.
    """
    from edgeship.isolate import child_env, python_command  # noqa: PLC0415

    work = tempfile.mkdtemp(prefix="edgeship-timing-")
    try:
        unpack(bundle_tar, work)
        bundle = os.path.join(work, "bundle")
        with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as fh:
            manifest = json.load(fh)
        rows = []
        for art in manifest["artifacts"]:
            for engine, why in _engines_for(art["format"], tuple(timing.get("engines") or ())):
                row = {"artifact": art["file"], "format": art["format"], "engine": engine}
                if why:
                    rows.append({**row, "skipped": why})
                    continue
                cmd = python_command() + ["-m", "edgeship.cli", "bench", bundle, "--artifact", art["file"],
                                          "--backend", engine, "--runs", str(timing["runs"]), "--warmup",
                                          str(timing["warmup"]), "--threads", str(timing["threads"]), "--json"]
                env = dict(child_env(), EDGESHIP_PROGRESS="0", TF_CPP_MIN_LOG_LEVEL="3")
                try:
                    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
                except subprocess.TimeoutExpired:
                    rows.append({**row, "skipped": f"timed out after {timeout:.0f} s"})
                    continue
                if p.returncode != 0:
                    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
                    why = (lines[-1] if lines else f"exit code {p.returncode}").replace("edgeship: error: ", "")
                    rows.append({**row, "skipped": why})
                    continue
                r = json.loads(p.stdout)
                rows.append({**row, **{k: r[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "init_ms",
                                                         "peak_rss_bytes")},
                             "engine_version": (r.get("backend") or {}).get("engine_version"),
                             "runs_on": (r.get("backend") or {}).get("device")})
        return {"hostname": socket.gethostname(), "rows": rows}
    finally:
        shutil.rmtree(work, ignore_errors=True)
