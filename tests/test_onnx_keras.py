"""Keras -> FP32 ONNX (tf2onnx, checked within 1e-4) -> INT8 QDQ ONNX; both formats in one bundle."""

from __future__ import annotations


import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
from test_onnx_common import digits_like, reference_run  # noqa: E402

from edgeship.converters import onnx_formats, registry  # noqa: E402, F401 - registers the ONNX exporters
from edgeship.converters.onnx_export import export_keras  # noqa: E402
from edgeship.converters.registry import ExportRequest, IOType, Precision, Source  # noqa: E402
from edgeship.errors import ValidationFailedError  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kmodel():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu6"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(5),
    ])
    # non-trivial BatchNorm statistics
    bn = m.layers[1]
    rng = np.random.default_rng(0)
    bn.moving_mean.assign(rng.normal(0, 0.1, 8).astype(np.float32))
    bn.moving_variance.assign(rng.uniform(0.5, 1.5, 8).astype(np.float32))
    return m


@pytest.fixture(scope="module")
def samples():
    return digits_like(48, size=8).transpose(0, 2, 3, 1).copy()


def _source(m):
    return Source(kind="keras", format="in_memory", path=None, sha256=None, layout="NHWC",
                  inputs=[{"name": "input", "shape": [1, 8, 8, 3], "dtype": "float32", "quantization": None}],
                  outputs=[{"name": "out", "shape": [1, 5], "dtype": "float32", "quantization": None}],
                  handle=m, predict=lambda x: [np.asarray(m(x, training=False))])


def test_fp32_export_matches_keras(kmodel, samples, tmp_path):
    p = tmp_path / "k.onnx"
    res = export_keras(kmodel, str(p), samples=samples)
    assert res["settings"]["max_abs_error"] <= 1e-4
    assert res["settings"]["opset"] == 17
    got = reference_run(p, samples)  # dynamic batch kept in the FP32 export
    np.testing.assert_allclose(got, np.asarray(kmodel(samples, training=False)), atol=1e-4)


def test_mismatch_is_refused(kmodel, samples, tmp_path):
    def wrong(x):
        return [np.asarray(kmodel(x, training=False)) + 1e-3]

    with pytest.raises(ValidationFailedError, match="1e-04|0.0001"):
        export_keras(kmodel, str(tmp_path / "k.onnx"), samples=samples, reference=wrong)


def test_keras_to_int8_onnx_exporter(kmodel, samples, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    req = ExportRequest(precision=Precision.INT8, io=IOType.INT8, calib=samples[:32],
                        out_path=str(tmp_path / "model.int8.onnx"), workdir=str(work))
    info = registry.find_exporter("keras", "onnx")(_source(kmodel), req)
    assert info["precision"] == "int8" and info["io"] == "float" and info["layout"] == "NHWC"
    assert info["inputs"][0]["shape"] == [1, 8, 8, 3]
    assert info["extra"]["keras_to_onnx"]["max_abs_error"] <= 1e-4
    assert info["extra"]["onnx_quantization"]["activation_type"] == "uint8"
    x = samples[32:]
    ref = np.asarray(kmodel(x, training=False))
    got = np.concatenate([reference_run(req.out_path, x[i:i + 1]) for i in range(len(x))])
    assert float(np.mean(ref.argmax(1) == got.argmax(1))) >= 0.8
    cos = np.sum(ref * got, 1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert float(np.mean(cos)) > 0.99


def test_convert_writes_both_formats(kmodel, samples, tmp_path):
    import edgeship

    res = edgeship.convert(kmodel, tmp_path / "bundle", calib=samples, formats=("tflite", "onnx"))
    files = {a["file"]: a for a in res.manifest["artifacts"]}
    assert set(files) == {"model.int8.tflite", "model.int8.onnx"}
    assert files["model.int8.onnx"]["io"] == "float" and files["model.int8.onnx"]["layout"] == "NHWC"
    assert "onnx_quantization" in res.manifest["settings"]
    for name in files:
        assert name in res.manifest["validation"]["artifacts"]
