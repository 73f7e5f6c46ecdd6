"""Chunked calibration (converters.onnx_calib): the same ranges as one pass, bounded chunks."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgeship.converters.onnx_calib import calib_stride, calibration_reader  # noqa: E402
from edgeship.converters.onnx_quant import quantize_onnx  # noqa: E402


def _matmul(path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 0.5, "W")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g", [x], [y], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def _scales(path):
    m = onnx.load(str(path))
    return {i.name: float(numpy_helper.to_array(i).reshape(-1)[0]) for i in m.graph.initializer if i.name.endswith("_scale")}


def test_reader_ranges_and_stride():
    r = calibration_reader(["x"], np.zeros((7, 4), np.float32), 2)  # padded to 8 -> 4 batches
    assert len(r) == 4
    r.set_range(1, 3)
    assert [r.get_next() is not None for _ in range(3)] == [True, True, False]
    assert calib_stride(300, 0, histogram=False) == 15  # a divisor of 300, at most 16
    assert calib_stride(67, 0, histogram=False) == 1  # prime: one batch per chunk
    assert calib_stride(64, 300 << 20, histogram=True) == 2  # 1 GiB budget / 300 MB per batch


def test_chunked_calibration_keeps_minmax_ranges(tmp_path):
    """The extreme sample (-7) is in the first chunk: ORT's CalibMaxIntermediateOutputs would drop it."""
    _matmul(tmp_path / "m.onnx")
    calib = np.array([[-7] * 4, [5] * 4] + [[v] * 4 for v in (1, 2, 3, 0.5) * 8], np.float32)  # 34 samples
    res = quantize_onnx(str(tmp_path / "m.onnx"), str(tmp_path / "q.onnx"), calib)
    q = res["extra"]["onnx_quantization"]
    assert q["calibration_chunk_batches"] == 2  # 17 chunks of 2
    s = _scales(tmp_path / "q.onnx")
    assert s["x_scale"] == pytest.approx(12 / 255, rel=1e-5)  # uint8 asymmetric over -7..5
    assert s["y_scale"] == pytest.approx(6 / 255, rel=1e-5)
