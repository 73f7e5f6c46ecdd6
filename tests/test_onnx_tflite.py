"""ONNX -> INT8 TFLite through onnx2tf (one module-scoped conversion: onnx2tf is slow)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from _shared import audit_events

pytest.importorskip("onnx2tf")
pytest.importorskip("onnxruntime")
pytest.importorskip("tensorflow")
from test_onnx_common import digits_conv_net, reference_run  # noqa: E402

from edgeship.converters import onnx_formats, registry  # noqa: E402
from edgeship.converters.registry import ExportRequest, IOType, Precision  # noqa: E402

pytestmark = pytest.mark.slow


def _run_tflite_nhwc(path, x_nchw):
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    s_in, z_in = i["quantization"]
    s_out, z_out = o["quantization"]
    outs = []
    for k in range(len(x_nchw)):
        x = x_nchw[k:k + 1].transpose(0, 2, 3, 1)
        if i["dtype"] != np.float32:
            info = np.iinfo(i["dtype"])
            x = np.clip(np.round(x / s_in + z_in), info.min, info.max).astype(i["dtype"])
        it.set_tensor(i["index"], x)
        it.invoke()
        y = it.get_tensor(o["index"])
        outs.append((y.astype(np.float32) - z_out) * s_out if o["dtype"] != np.float32 else y)
    return np.concatenate(outs)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx2tf")
    onnx_path = d / "digits_cnn.onnx"
    calib, xe, ye = digits_conv_net(onnx_path)
    src = onnx_formats.load_onnx(str(onnx_path))
    work = d / "work"
    work.mkdir()
    req = ExportRequest(precision=Precision.INT8, io=IOType.INT8, calib=calib, out_path=str(d / "model.int8.tflite"),
                        workdir=str(work))
    # No network: every socket connection attempt in this process during the conversion is
    # refused and recorded (an audit hook, not a patch); onnx2tf looks for a sample file in the
    # working directory, so that is an empty folder: it must not need one.
    with audit_events("socket.connect", refuse=OSError) as attempts, pytest.MonkeyPatch.context() as mp:
        with pytest.raises(OSError, match="refused in this test"):  # the guard's own control
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        assert len(attempts) == 1
        attempts.clear()
        mp.chdir(d)
        info = registry.find_exporter("onnx", "tflite")(src, req)
    attempts = list(attempts)
    return {"info": info, "src": src, "onnx": onnx_path, "tflite": d / "model.int8.tflite", "xe": xe, "ye": ye,
            "attempts": attempts, "dir": d}


def test_layout_and_io_recorded(converted):
    info = converted["info"]
    assert converted["src"].layout == "NCHW"
    assert info["format"] == "tflite" and info["precision"] == "int8" and info["io"] == "int8"
    assert info["layout"] == "NHWC"
    assert info["inputs"][0]["shape"] == [1, 8, 8, 3] and info["inputs"][0]["dtype"] == "int8"
    assert info["inputs"][0]["quantization"]["scale"]
    assert info["outputs"][0]["shape"] == [1, 10]
    ex = info["extra"]["onnx_to_tflite"]
    assert ex["source_layout"] == "NCHW" and ex["artifact_layout"] == "NHWC"
    assert ex["float_max_abs_error"] < 1e-3


def test_no_download_attempted(converted):
    assert converted["attempts"] == []
    # onnx2tf asked for its sample images and got the user's calibration data instead
    assert converted["info"]["extra"]["onnx_to_tflite"]["sample_data_served_locally"] >= 1
    assert not any(n.endswith(".npy") for n in os.listdir(converted["dir"]))
    import onnx2tf.onnx2tf as o2
    import onnx2tf.utils.common_functions as cf

    assert o2.download_test_image_data is cf.download_test_image_data  # restored
    assert cf.download_test_image_data.__module__ == "onnx2tf.utils.common_functions"


def test_int8_tflite_agrees_with_onnx(converted):
    xe, ye = converted["xe"], converted["ye"]
    ref = np.concatenate([reference_run(converted["onnx"], xe[i:i + 1]) for i in range(len(xe))])
    got = _run_tflite_nhwc(converted["tflite"], xe)
    agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
    acc_src = float(np.mean(ref.argmax(1) == ye))
    acc_int8 = float(np.mean(got.argmax(1) == ye))
    assert agree >= 0.98, (agree, acc_src, acc_int8)
    assert acc_int8 >= acc_src - 0.02
