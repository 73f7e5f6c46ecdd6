"""TensorRT INT8 calibration table for FP32 ONNX models, from calibration samples (file format only: no GPU here)."""

from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from edgeship.converters.targets.tensorrt import TRT_TABLE, bundle_trt_calibration_table, write_trt_calibration_table  # noqa: E402,E501
from edgeship.runtime.backends import OrtOptions  # noqa: E402
from edgeship.runtime.backends.onnxruntime import TENSORRT, provider_options  # noqa: E402

W = np.array([1.5, -2.0, 0.5, 3.0], np.float32)


def _fp32_onnx(path: str) -> None:
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["scaled"]), helper.make_node("Relu", ["scaled"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], [numpy_helper.from_array(W, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)


def _read_table(path: str) -> dict:
    from onnxruntime.quantization.CalTableFlatBuffers.TrtTable import TrtTable  # noqa: PLC0415

    with open(path, "rb") as fh:
        buf = fh.read()
    t = TrtTable.GetRootAsTrtTable(buf, 0)
    return {t.Dict(i).Key().decode(): float(t.Dict(i).Value().decode()) for i in range(t.DictLength())}


def test_table_files_and_values(tmp_path):
    model = str(tmp_path / "m.onnx")
    _fp32_onnx(model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    out = tmp_path / "trt"
    path = write_trt_calibration_table(model, x, str(out))
    assert os.path.basename(path) == TRT_TABLE
    assert {"calibration.flatbuffers", "calibration.cache", "calibration.json"} <= set(os.listdir(out))
    table = _read_table(path)
    assert {"x", "scaled", "y"} <= set(table)
    scaled = x * W
    # onnxruntime's table stores max(highest, lowest) of the min/max range of each tensor
    for name, arr in (("x", x), ("scaled", scaled), ("y", np.maximum(scaled, 0))):
        assert table[name] == pytest.approx(max(float(arr.max()), float(arr.min())), rel=1e-5)
    lines = (out / "calibration.cache").read_text().splitlines()
    text = dict(line.rsplit(" ", 1) for line in lines)
    assert set(text) == set(table) and all(float(text[k]) == pytest.approx(table[k]) for k in table)


def test_empty_samples_refused(tmp_path):
    from edgeship.errors import InputError  # noqa: PLC0415

    model = str(tmp_path / "m.onnx")
    _fp32_onnx(model)
    with pytest.raises(InputError):
        write_trt_calibration_table(model, np.zeros((0, 4), np.float32), str(tmp_path / "t"))


def test_tensorrt_provider_options_use_the_table(tmp_path):
    model = str(tmp_path / "m.onnx")
    _fp32_onnx(model)
    table = write_trt_calibration_table(model, np.ones((4, 4), np.float32), str(tmp_path / "t"))
    cache = str(tmp_path / "cache")
    opts = provider_options(TENSORRT, model_sha256="0" * 64, qdq=False,
                            options=OrtOptions(trt_calibration_table=table, trt_cache_dir=cache))
    assert opts["trt_int8_enable"] == "True"
    assert opts["trt_int8_calibration_table_name"] == TRT_TABLE
    assert opts["trt_int8_use_native_calibration_table"] == "False"
    # the TensorRT provider reads the table from its cache folder (GetCachePath(cache_path, name))
    assert os.path.isfile(os.path.join(cache, TRT_TABLE))
    qdq = provider_options(TENSORRT, model_sha256="0" * 64, qdq=True,
                           options=OrtOptions(trt_calibration_table=table, trt_cache_dir=cache))
    assert "trt_int8_calibration_table_name" not in qdq  # TensorRT refuses a table with Q/DQ nodes


def test_bundle_table(tmp_path):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tf2onnx")
    from edgeship.converters import convert  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="relu")])
    rng = np.random.default_rng(1)
    calib = rng.random((40, 6), dtype=np.float32)
    res = convert(m, tmp_path / "b", calib=calib, precision="fp32", formats=("onnx",), target="jetson")
    assert [a["targets"] for a in res.manifest["artifacts"]] == [["jetson"]]
    path = bundle_trt_calibration_table(str(tmp_path / "b"), str(tmp_path / "t"))
    table = _read_table(path)
    name = res.manifest["artifacts"][0]["inputs"][0]["name"]
    used = np.load(tmp_path / "b" / "calibration.npz")["x"]
    assert table[name] == pytest.approx(max(float(used.max()), float(used.min())), rel=1e-5)
