"""Shared by the hostile-data, force/race and isolation hardening tests: a tiny real ONNX model,
the CLI as a child process with a timeout, and a child's own peak RSS (VmHWM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

VENV_BIN = os.path.dirname(sys.executable)
EDGESHIP = os.path.join(VENV_BIN, "edgeship")
TIMEOUT = 300


def tiny_onnx(path, *, dim=4):
    """A real 1 x dim x dim x 1 -> 3 classifier (Reshape, MatMul, Softmax), opset 17."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim, dim, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((dim * dim, 3)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([1, dim * dim], np.int64), "shape")
    g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["z"]),
                           helper.make_node("Softmax", ["z"], ["y"], axis=-1)], "c", [x], [y], [w, shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return str(path)


def cli(*args, cwd=None, timeout=TIMEOUT, env=None):
    """``(returncode, stdout, stderr, seconds)`` of the ``edgeship`` console script; a hang is rc ``"hang"``."""
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EDGESHIP_PROGRESS="0", **(env or {}))
    t0 = time.perf_counter()
    try:
        p = subprocess.run([EDGESHIP, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                           env=e, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        return "hang", exc.stdout or "", exc.stderr or "", time.perf_counter() - t0
    return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0


def typed_one_line(rc, err) -> bool:
    """exit 2, no traceback, and the error is one ``edgeship: error:`` line."""
    lines = [ln for ln in (err or "").splitlines() if ln.startswith("edgeship: error:")]
    return rc == 2 and "Traceback" not in (err or "") and len(lines) == 1


def child_peak_rss_kb(code: str, *args, timeout=TIMEOUT) -> tuple[int, dict]:
    """Run ``code`` in a fresh isolated Python; it must print one JSON line. Returns (VmHWM kB, that JSON)."""
    tail = ("\nimport json as _j\nfor _l in open('/proc/self/status'):\n    if _l.startswith('VmHWM:'):\n"
            "        print('HWM', _l.split()[1])\n")
    p = subprocess.run([sys.executable, "-I", "-c", code + tail, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout)
    hwm, obj = None, {}
    for line in p.stdout.splitlines():
        if line.startswith("HWM "):
            hwm = int(line.split()[1])
        elif line.startswith("{"):
            obj = json.loads(line)
    if hwm is None:
        raise AssertionError(f"child failed (rc {p.returncode}): {p.stderr[-1500:]}")
    return hwm, obj
