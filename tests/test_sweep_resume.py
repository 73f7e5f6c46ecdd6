"""Ctrl-C halfway through ``edgeship sweep`` keeps the finished trials; the re-run does only the missing ones.

The sweep runs in a child process with its own local Ray (``ray.init()``, the default);
after the interrupt no Ray process is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from _sweep_shared import ray_processes, run_cli, wait_no_ray_processes, write_data, write_spec

pytestmark = pytest.mark.slow
pytest.importorskip("ray")


def _records(folder) -> dict:
    tdir = os.path.join(folder, "trials")
    if not os.path.isdir(tdir):
        return {}
    out = {}
    for f in os.listdir(tdir):
        if f.endswith(".json") and not f.startswith("."):
            with open(os.path.join(tdir, f)) as fh:
                rec = json.load(fh)  # every record on disk is whole
            out[rec["id"]] = rec
    return out


def test_interrupted_sweep_resumes_only_missing_trials(tmp_path, digits, digits_cnn_file):
    before = ray_processes()  # a Ray of someone else may run; the sweep's own must not outlive it
    shutil.copy(digits_cnn_file, tmp_path / "digits.keras")
    spec = write_spec(tmp_path / "resume.toml", models=[("digits", "digits.keras")],
                      data=write_data(tmp_path / "data", digits),
                      axes={"precision": ["fp32", "int8", "fp16"]}, sweep={"output": "out", "cpus_per_trial": os.cpu_count()})
    folder = str(tmp_path / "out")
    env = dict(os.environ, EDGESHIP_PROGRESS="0", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("RAY_ADDRESS", None)
    p = subprocess.Popen([sys.executable, "-m", "edgeship.cli", "sweep", spec], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 300
        while not _records(folder) and time.monotonic() < end and p.poll() is None:
            time.sleep(0.2)
        assert p.poll() is None, f"the sweep ended before it was interrupted: {p.communicate()[1][-2000:]}"
        p.send_signal(signal.SIGINT)  # Ctrl-C
        _out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert wait_no_ray_processes(before) == [], "the interrupted sweep left Ray processes behind"

    before = _records(folder)
    converted = {tid for tid, r in before.items() if r["status"] in ("converted", "done")}
    assert 1 <= len(converted) < 3, before  # all the CPUs per trial: one trial at a time
    bundle_mtimes = {tid: os.stat(os.path.join(folder, "bundles", tid, "manifest.json")).st_mtime_ns
                     for tid in converted}

    again = run_cli(["sweep", spec, "--json"])
    assert again.returncode == 0, again.stderr[-2000:]
    counts = json.loads(again.stdout)["counts"]
    assert counts["converted"] == 3 - len(converted)  # only the missing trials were converted
    assert counts["failed"] == 0
    after = _records(folder)
    assert len(after) == 3 and all(r["status"] == "done" for r in after.values())
    for tid, mtime in bundle_mtimes.items():  # the bundles converted before the interrupt were kept
        assert os.stat(os.path.join(folder, "bundles", tid, "manifest.json")).st_mtime_ns == mtime
        assert after[tid]["conversion"] == before[tid]["conversion"]
    assert wait_no_ray_processes(before) == []
