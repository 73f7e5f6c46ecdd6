"""--target intel: an INT8 ONNX artifact quantized by NNCF (edgeship's symmetric QDQ without it), validated
like every artifact, run by OpenVINO and ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tf2onnx")

import edgeship  # noqa: E402
from edgeship import runtime as rt  # noqa: E402
from edgeship.converters.targets import parse_targets  # noqa: E402
from edgeship.converters.targets.openvino import quantize  # noqa: E402
from edgeship.errors import InputError  # noqa: E402
from edgeship.vocab import Format, Target  # noqa: E402

pytestmark = pytest.mark.slow


def test_intel_rules():
    tgts, precision, _, formats = parse_targets("intel", None, None, None)
    assert tgts == (Target.INTEL,) and precision.value == "int8" and formats == (Format.ONNX,)
    with pytest.raises(InputError, match="target intel needs the onnx format"):
        parse_targets("intel", None, None, ("tflite",))


@pytest.fixture(scope="module")
def intel_bundle(digits_cnn, digits, tmp_path_factory):
    pytest.importorskip("nncf")
    x, y = digits
    return edgeship.convert(digits_cnn, str(tmp_path_factory.mktemp("intel") / "b"), calib=x[:200],
                            eval_data=(x[1400:], y[1400:]), target="intel")


def test_nncf_artifact_is_validated_and_runs_on_openvino_and_ort(intel_bundle, digits):
    pytest.importorskip("openvino")
    man = intel_bundle.manifest
    (art,) = man["artifacts"]
    assert art["file"] == "model.int8.onnx" and art["targets"] == ["intel"]
    assert any("by NNCF" in n for n in art["notes"])
    val = man["validation"]["artifacts"]["model.int8.onnx"]
    assert val["top1_agreement"] >= 0.98 and val["accuracy"] >= val["source_accuracy"] - 0.01
    x, y = digits
    xs = x[1400:1528]
    with rt.load(intel_bundle.bundle, backend="openvino") as ov, rt.load(intel_bundle.bundle) as ort:
        assert ov.info.backend == "openvino" and ort.info.backend == "onnxruntime"
        a, b = (next(iter(m.run(xs).values())) for m in (ov, ort))
    assert float(np.mean(a.argmax(1) == b.argmax(1))) >= 0.98
    assert float(np.mean(a.argmax(1) == y[1400:1528])) > 0.85


def test_without_nncf_edgeship_writes_symmetric_int8_qdq(digits_cnn, digits, tmp_path):
    import onnx
    from onnx import numpy_helper

    x, _ = digits
    res = edgeship.convert(digits_cnn, str(tmp_path / "fp32"), precision="fp32", formats=("onnx",))
    fp32 = str(tmp_path / "fp32" / "model.fp32.onnx")
    info = quantize(fp32, str(tmp_path / "q.onnx"), x[:100], input_shape=(1, 8, 8, 1), use_nncf=False)
    s = info["extra"]["onnx_quantization"]
    assert s["target"] == "openvino" and s["activation_type"] == "int8" and s["activation_symmetric"]
    assert any("NNCF is not installed" in n for n in info["notes"])
    q = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    zps = [inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)  # zero point 0 everywhere
    with rt.load(str(tmp_path / "q.onnx")) as m, rt.load(res.bundle) as ref:
        a, b = (next(iter(e.run(x[1400:1464]).values())) for e in (m, ref))
    assert float(np.mean(a.argmax(1) == b.argmax(1))) >= 0.97
