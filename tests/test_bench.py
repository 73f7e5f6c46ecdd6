"""The benchmark harness in --quick mode on a tiny model: it runs and writes complete JSON.

No timing assertions: a busy CI machine may be slow; only shapes and signs are checked.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pass_matches_target(data, key):
    """PASS/FAIL is what the measured value says against the stated target ("<= 1.10", ">= 0.8")."""
    t = data["targets"][key]
    op, bound = t["target"].split()[:2]
    bound = float(bound.rstrip("x"))
    value = data["summary"][key]
    want = {"<=": value <= bound, ">=": value >= bound, "<": value < bound, ">": value > bound}[op]
    assert t["pass"] is want, (key, value, t)


def test_bench_quick_writes_json_and_plot(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EDGESHIP_PROGRESS="0")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick", "--runs", "10", "--warmup", "2",
         "--cold-runs", "1", "--only", "runtime_vs_bare,int8_vs_fp32,cold_start", "--json", str(out),
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, env=env, timeout=900, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "edgeship / bare, p50" in proc.stdout and ("PASS" in proc.stdout or "FAIL" in proc.stdout)

    data = json.loads(out.read_text())
    assert set(data) >= {"meta", "rows", "summary", "targets", "details", "plot"}
    assert data["meta"]["quick"] is True and data["meta"]["threads"] >= 1
    s = data["summary"]
    for key in ("runtime.ratio_p50", "runtime.edgeship_p50_ms", "runtime.bare_p50_ms", "precision.ratio_p50",
                "precision.fp32_p50_ms", "cold_start.edgeship_seconds", "cold_start.edgeship_rss_mb",
                "cold_start.bare_litert_seconds", "cold_start.bare_litert_rss_mb", "cold_start.tensorflow_seconds",
                "cold_start.tensorflow_rss_mb"):
        assert isinstance(s[key], (int, float)) and math.isfinite(s[key]) and s[key] > 0, (key, s.get(key))
    # edgeship and the bare loop compute the same thing.
    assert s["runtime.max_abs_output_diff"] <= 1e-6
    # The cold-start child never pulled in TensorFlow or OpenCV.
    assert s["cold_start.edgeship_heavy_modules"] == "none"
    for key in ("runtime.ratio_p50", "cold_start.edgeship_seconds", "cold_start.edgeship_rss_mb"):
        _pass_matches_target(data, key)
    assert os.path.getsize(data["plot"]) > 1000

    # A second run reuses the cached bundles.
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick", "--runs", "5", "--warmup", "0",
         "--only", "runtime_vs_bare", "--json", str(tmp_path / "again.json"), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, env=env, timeout=900, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["meta"]["bundles_cached"] is True
    assert again["summary"]["runtime.ratio_p50"] > 0


def test_bench_quick_onnx_rows(tmp_path):
    out = tmp_path / "onnx.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EDGESHIP_PROGRESS="0")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "run.py"), "--quick", "--only", "onnx", "--runs", "5",
         "--warmup", "0", "--json", str(out), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, env=env, timeout=900, cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = [r for r in data["rows"] if r["section"] == "onnx"]
    assert rows and not [r for r in data["rows"] if r["key"] == "error"], data["rows"]
    for key in ("onnx.onnx_fp32_ort_bare_p50_ms", "onnx.onnx_int8_ort_bare_p50_ms",
                "onnx.onnx_int8_edgeship_runtime_p50_ms"):
        assert isinstance(data["summary"][key], (int, float)) and data["summary"][key] > 0, key
    _pass_matches_target(data, "onnx.onnx_int8_ort_bare_ratio")
