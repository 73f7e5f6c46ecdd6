"""Helpers of the sweep tests (no fixtures here): data files, spec files, record comparison, Ray processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

# A Keras Lambda that passes its input through in the test process and kills the process that runs it
# inside a Ray worker (whose argv[0] is Ray's default_worker.py): a real model that crashes its worker.
CRASH_IN_WORKER = 'lambda t: t if "default_worker" not in __import__("sys").argv[0] else __import__("os")._exit(3)'
SLEEP_IN_WORKER = ('lambda t: t if "default_worker" not in __import__("sys").argv[0] '
                   'else (__import__("time").sleep(600) or t)')


def write_data(folder, digits) -> dict:
    """calib.npz (120 samples, no labels) and eval.npz (the last 300 digits with labels) in ``folder``."""
    x, y = digits
    os.makedirs(folder, exist_ok=True)
    calib, ev = os.path.join(folder, "calib.npz"), os.path.join(folder, "eval.npz")
    np.savez(calib, x=np.asarray(x[:1200:10]))
    np.savez(ev, x=np.asarray(x[-300:]), y=np.asarray(y[-300:]))
    return {"calib": calib, "eval": ev}


def toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


def write_spec(path, *, models, data: dict, axes: dict, sweep: dict | None = None, timing: dict | None = None,
               constraints: dict | None = None) -> str:
    """A sweep spec TOML file at ``path`` (models: ``[(name, path)]`` or ``[(name, path, allow_unsafe)]``)."""
    lines = []

    def table(name, d):
        if d:
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in d.items())
            lines.append("")

    table("sweep", sweep or {})
    for m in models:
        lines += ["[[model]]", f"name = {toml_value(m[0])}", f"path = {toml_value(str(m[1]))}"]
        if len(m) > 2:
            lines.append(f"allow_unsafe = {toml_value(m[2])}")
        lines.append("")
    table("data", data)
    table("axes", axes)
    table("timing", timing or {"runs": 20, "warmup": 2})
    table("constraints", constraints or {})
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    return str(path)


def comparable(records) -> dict:
    """What must not depend on where or how a trial ran: id, status, settings, every artifact's figures."""
    out = {}
    for r in records:
        out[r["id"]] = {"status": r["status"], "settings": r["settings"], "model": r["model"],
                        "artifacts": (r.get("conversion") or {}).get("artifacts"),
                        "timed": sorted((row["artifact"], row["engine"], "p50_ms" in row)
                                        for row in (r.get("timing") or {}).get("rows", []))}
    return out


def run_cli(args, *, timeout=600, env=None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env, EDGESHIP_PROGRESS="0", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", "edgeship.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def ray_processes() -> list:
    """Ray's daemons (raylet, gcs_server) running on this machine now."""
    import psutil

    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            name = p.info["name"] or ""
            cmd = " ".join(p.info["cmdline"] or [])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if name in ("raylet", "gcs_server") or "/ray/core/src/ray/raylet/raylet" in cmd or "gcs_server" in cmd:
            out.append(p.pid)
    return out


def wait_no_ray_processes(before=(), timeout=30.0) -> list:
    """Ray daemons still running after up to ``timeout`` s, apart from those in ``before`` (running already)."""
    end = time.monotonic() + timeout
    left = sorted(set(ray_processes()) - set(before))
    while left and time.monotonic() < end:
        time.sleep(0.5)
        left = sorted(set(ray_processes()) - set(before))
    return left


AXES = {"precision": ["fp32", "int8"], "calib_count": [16, 32]}


def shared_inputs(base, digits, model_file) -> dict:
    """One folder of inputs (model, data) for every sweep test of the session: the same bytes, the same trial ids.

    ``base`` is pytest's base temp folder; the folder is built by the first caller.
    """
    import shutil

    root = base / "sweep-inputs"
    if not (root / "ready").exists():
        root.mkdir(exist_ok=True)
        shutil.copy(model_file, root / "digits.keras")
        write_data(root / "data", digits)
        (root / "ready").write_text("ok")
    return {"root": root, "models": [("digits", "digits.keras")],
            "data": {"calib": "data/calib.npz", "eval": "data/eval.npz"}}


def serial_records(inputs) -> list:
    """The records of the ``AXES`` trials run one by one (``edgeship sweep --serial``) in a fresh process.

    Run once per session: a second call finds every trial recorded and converts nothing.
    """
    spec = write_spec(inputs["root"] / "serial.toml", models=inputs["models"], data=inputs["data"], axes=AXES,
                      sweep={"output": "serial-out"})
    p = run_cli(["sweep", spec, "--serial", "--json"])
    assert p.returncode == 0, p.stderr[-2000:]
    folder = json.loads(p.stdout)["folder"]
    tdir = os.path.join(folder, "trials")
    return [json.load(open(os.path.join(tdir, f))) for f in sorted(os.listdir(tdir)) if f.endswith(".json")]
