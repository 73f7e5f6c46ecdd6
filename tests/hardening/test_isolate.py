"""``edgeship.isolate``: what a probe returns, and how a hang, an error and the opt-outs behave.

(Crashes of the child, e.g. SIGSEGV, are produced by the mutated models in
``test_malformed_models.py``; here the paths that need no crashing file.)
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _hutil import record

pytestmark = pytest.mark.hardening
onnx = pytest.importorskip("onnx")

import edgeship.runtime as rt  # noqa: E402
from _shared import build_external_data_model  # noqa: E402
from edgeship.errors import ModelFormatError, UnsafeModelError  # noqa: E402
from edgeship.isolate import probe_if_bare, probe_model  # noqa: E402


def _model(path, external=None):
    return build_external_data_model(os.path.dirname(str(path)), external, shape=(1, 4),
                                     file=os.path.basename(str(path)))


def test_probe_paths(tmp_path, monkeypatch):
    good = _model(tmp_path / "good.onnx")
    info = probe_model(good)
    assert info["ok"] and info["backend"] == "onnxruntime" and info["inputs"][0]["shape"] == [1, 4]
    assert 0 < info["peak_rss_kb"] < 2_000_000
    # load(isolate=True) probes, then loads here
    with rt.load(good, isolate=True) as m:
        np.testing.assert_array_equal(m.run(np.zeros((1, 4), np.float32))["y"], [[0, 1, 2, 3]])
    # a hang: the child is killed at the timeout
    with pytest.raises(ModelFormatError, match="did not finish within"):
        probe_model(good, timeout=0.05)
    # the child's typed error comes back with its class
    evil = _model(tmp_path / "evil.onnx", external="/etc/passwd")
    with pytest.raises(UnsafeModelError):
        probe_model(evil)
    with pytest.raises(UnsafeModelError):
        rt.load(evil, isolate=True)
    # garbage: a typed format error
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 4 + b"TFL3" + os.urandom(200))
    with pytest.raises(ModelFormatError):
        probe_model(junk)
    # opt-outs: bundle folders and missing paths are not probed; EDGESHIP_ISOLATE=0 turns it off
    assert probe_if_bare(str(tmp_path)) is None and probe_if_bare(str(tmp_path / "missing.onnx")) is None
    assert probe_if_bare(good)["ok"]
    monkeypatch.setenv("EDGESHIP_ISOLATE", "0")
    assert probe_if_bare(evil) is None
    record("(a) isolate API", tried=6, **{"host crashes": 0, "rejected (typed)": 4, "accepted": 2,
                                          "slowest (s)": info["wall_s"],
                                          "notes": f"one probe costs {info['wall_s']:.2f} s and "
                                                   f"{info['peak_rss_kb'] // 1024} MB in the child"})
