"""`import edgeship.runtime` needs no TensorFlow, ONNX or OpenCV, and still runs a real model.

The .tflite file and a bundle are made here with TensorFlow; a subprocess then
blocks the heavy packages with a meta-path finder that raises ImportError,
imports the runtime, checks ``sys.modules`` and loads and runs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import _tflite_fixtures as F
from _shared import import_blocker_source

BLOCKED = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "onnx", "tf2onnx", "cv2", "keras")

CHILD = import_blocker_source(BLOCKED) + textwrap.dedent(
    """
    import json, sys
    import numpy as np

    import edgeship.runtime as rt
    from edgeship.errors import EdgeshipError

    loaded_after_import = blocked_loaded()
    x = np.load(sys.argv[3])
    out = {"after_import": loaded_after_import}
    with rt.load(sys.argv[1]) as m:
        out["bare"] = m.run(x)[m.outputs[0].name].tolist()
        out["backend"] = m.info.backend
        out["skipped"] = m.info.skipped
    with rt.load(sys.argv[2]) as m:
        out["bundle"] = m.run(x)["probs"].tolist()
        # 8x8 gray image, gray model: predict needs no resize and no colour conversion, so no OpenCV.
        img = np.rint(x[0, :, :, 0] * 255).astype(np.uint8)
        out["classes"] = [list(c) for c in m.classify(img, top_k=2)]
    try:
        rt.load(sys.argv[1], backend="tensorflow.lite", strict=True)
        out["tf_strict"] = "loaded"
    except EdgeshipError as exc:
        out["tf_strict"] = type(exc).__name__
    out["after_run"] = blocked_loaded()
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    fx = F.models()
    root = tmp_path_factory.mktemp("imp")
    b = F.write_bundle(str(root / "bundle"), {"model.int8.tflite": (fx.path("int8"), "int8", "int8")},
                       source_inputs=F.DIGITS_SOURCE_INPUTS, source_outputs=F.DIGITS_SOURCE_OUTPUTS,
                       labels=F.DIGIT_LABELS, preprocessing=F.DIGITS_PREPROCESSING)
    x = F.digits(3)[0]
    np.save(root / "x.npy", x)
    return fx, b, str(root / "x.npy"), x


def test_runtime_runs_with_heavy_packages_blocked(files):
    fx, bundle, xpath, x = files
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", CHILD, fx.path("int8"), bundle, xpath],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["after_import"] == [] and out["after_run"] == []
    assert out["backend"] == "litert"
    ref = F.bare_int_run(fx.path("int8"), x)
    np.testing.assert_array_equal(np.asarray(out["bare"], np.float32), ref)
    np.testing.assert_array_equal(np.asarray(out["bundle"], np.float32), ref)
    assert out["classes"][0][2].startswith("digit_")
    # tensorflow.lite was blocked: forcing it strictly is a typed FallbackError, not an ImportError.
    assert out["tf_strict"] == "FallbackError"


LEAN = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import edgeship.runtime as rt
    after_import = sorted(m for m in sys.modules if m in WATCH or m.startswith("edgeship.runtime.tasks."))
    with rt.load(sys.argv[1]) as m:
        m.run(np.load(sys.argv[2]))
        after_run = sorted(m for m in sys.modules if m in WATCH or m.startswith("edgeship.runtime.tasks."))
        m.classify(np.zeros((8, 8), np.uint8))
    after_classify = sorted(m for m in sys.modules if m.startswith("edgeship.runtime.tasks."))
    print(json.dumps({"after_import": after_import, "after_run": after_run, "after_classify": after_classify}))
    """
)


def test_cold_start_imports_only_what_load_and_run_need(files):
    """A device's cold start (import, load, run) pays for no task adapter, no logging and, for a small
    model, no OpenSSL: each is imported on first use (benchmarks/run.py cold_start measures the time)."""
    fx, bundle, xpath, _ = files
    code = "WATCH = ('logging', '_hashlib', 'tempfile')\n" + LEAN
    proc = subprocess.run([sys.executable, "-c", code, bundle, xpath], capture_output=True, text=True,
                          env={k: v for k, v in dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3").items()
                               if k != "EDGESHIP_QUIET_NATIVE"}, timeout=120)  # a library caller, not the CLI
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["after_import"] == [] and out["after_run"] == [], out
    assert "edgeship.runtime.tasks.classify" in out["after_classify"]  # and the lazy names still resolve
