"""ONNX source -> INT8 TFLite and INT8 ONNX in one bundle through the public convert() and runtime."""

from __future__ import annotations


import numpy as np
import pytest

pytest.importorskip("onnx2tf")
from test_onnx_common import digits_conv_net  # noqa: E402

import edgeship  # noqa: E402
from edgeship import runtime  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnxconv")
    onnx_path = d / "digits_cnn.onnx"
    calib, xe, ye = digits_conv_net(onnx_path)
    np.savez(d / "calib.npz", x=calib)
    np.savez(d / "eval.npz", x=xe, y=ye)
    res = edgeship.convert(str(onnx_path), str(d / "bundle"), calib=str(d / "calib.npz"), eval_data=str(d / "eval.npz"),
                           formats=("tflite", "onnx"), precision="int8", io="int8")
    return res, xe, ye


def test_nchw_onnx_to_int8_tflite_and_onnx_agree_with_source(bundle):
    res, xe, ye = bundle
    man = res.manifest
    assert man["source"]["layout"] == "NCHW"
    arts = {a["format"]: a for a in man["artifacts"]}
    assert set(arts) == {"tflite", "onnx"}
    assert arts["tflite"]["layout"] == "NHWC" and arts["tflite"]["precision"] == "int8"
    val = man["validation"]["artifacts"]
    # the bar: an NCHW ONNX CNN goes to INT8 TFLite with top-1 agreement >= 0.98
    assert val[arts["tflite"]["file"]]["top1_agreement"] >= 0.98
    assert val[arts["onnx"]["file"]]["top1_agreement"] >= 0.98


def test_runtime_takes_source_layout_for_both_artifacts(bundle):
    res, xe, ye = bundle
    outs = {}
    for fmt in ("tflite", "onnx"):
        with runtime.load(res.bundle, artifact=fmt) as m:
            outs[fmt] = next(iter(m.run(xe[:64]).values()))  # NCHW in, whichever artifact runs
            assert m.info.backend in (("litert", "tflite_runtime", "tensorflow.lite") if fmt == "tflite" else ("onnxruntime",))
    acc = {k: float(np.mean(np.argmax(v, 1) == ye[:64])) for k, v in outs.items()}
    assert acc["tflite"] > 0.85 and acc["onnx"] > 0.85
    assert float(np.mean(np.argmax(outs["tflite"], 1) == np.argmax(outs["onnx"], 1))) >= 0.95
