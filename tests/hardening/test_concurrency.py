"""8 threads x N inferences on one Model (TFLite INT8 and ONNX): identical to a single-thread run.

Each thread has its own batch size (1-3), so a dynamic-batch engine is resized
while other threads run. Every output of every run is compared bit for bit
with the single-thread result for the same input.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from _hutil import harden_n, record

pytestmark = pytest.mark.hardening
import _tflite_fixtures as F  # noqa: E402

import edgeship.runtime as rt  # noqa: E402

THREADS = 8
RUNS = harden_n(200, 1000)


def _onnx_model(path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8, 8, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])
    w = numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "W")
    shape = numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")
    g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["z"]),
                           helper.make_node("Softmax", ["z"], ["y"], axis=-1)], "c", [x], [y], [w, shape])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


@pytest.mark.parametrize("kind", ["tflite-int8", "onnx"])
def test_threads_match_single_thread(tmp_path, kind):
    path = F.models().path("int8") if kind == "tflite-int8" else _onnx_model(str(tmp_path / "c.onnx"))
    x = F.digits(24)[0]
    batches = [x[i * 3:i * 3 + 1 + i % 3] for i in range(THREADS)]
    with rt.load(path, threads=1) as m:
        name = m.outputs[0].name
        expected = [m.run(b)[name] for b in batches]
        errors, mismatches, slowest = [], [0], [0.0]
        start = threading.Barrier(THREADS)
        lock = threading.Lock()

        def work(i):
            try:
                start.wait()
                bad = 0
                worst = 0.0
                for _ in range(RUNS):
                    t0 = time.perf_counter()
                    got = m.run(batches[i])[name]
                    worst = max(worst, time.perf_counter() - t0)
                    bad += not np.array_equal(got, expected[i])
                with lock:
                    mismatches[0] += bad
                    slowest[0] = max(slowest[0], worst)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        wall = time.perf_counter() - t0
    record("(f) threads on one Model", **{
        "tried": THREADS * RUNS, "host crashes": 0, "rejected (typed)": len(errors),
        "accepted": THREADS * RUNS - mismatches[0] - len(errors), "slowest (s)": slowest[0],
        "notes": f"{kind}: {THREADS}x{RUNS} runs in {wall:.2f} s, {mismatches[0]} differ from single-thread"})
    assert not errors, errors[:3]
    assert mismatches[0] == 0
    assert not any(t.is_alive() for t in threads)
