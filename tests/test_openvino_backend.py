"""The OpenVINO backend on a real digits bundle: same outputs as LiteRT/ONNX Runtime, info, strict, threads."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

import edgeship  # noqa: E402
from edgeship import runtime as rt  # noqa: E402
from edgeship.errors import FallbackError, InputError, ModelClosedError  # noqa: E402
from edgeship.runtime import backends  # noqa: E402
from edgeship.runtime.backends.openvino import OpenVINOBackend, ov_devices  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundles(digits_cnn, digits, tmp_path_factory):
    """{"int8": INT8 bundle (float I/O), "int8io": INT8 with int8 I/O, "fp32": FP32}, each tflite + onnx."""
    x, _ = digits
    root = tmp_path_factory.mktemp("ov")
    out = {}
    for key, prec, io in (("int8", "int8", "float"), ("int8io", "int8", "int8"), ("fp32", "fp32", "float")):
        res = edgeship.convert(digits_cnn, str(root / key), calib=x[:200], precision=prec, io=io,
                               formats=("tflite", "onnx"))
        out[key] = res.bundle
    return out


def test_registered_for_onnx_and_tflite_after_the_default_engines():
    entry = backends.get("openvino")
    assert entry.loader() is OpenVINOBackend
    assert set(entry.formats) == {"onnx", "tflite"}
    assert [e.name for e in backends.registered("onnx")][0] == "onnxruntime"
    assert OpenVINOBackend.available() == (True, "")
    assert OpenVINOBackend.thread_safe


@pytest.mark.parametrize("key,art", [("fp32", "onnx"), ("int8", "onnx"), ("fp32", "tflite"), ("int8", "tflite"),
                                     ("int8io", "tflite")])
def test_outputs_match_the_default_engine(bundles, digits, key, art):
    x, y = digits
    xs = x[1300:1428]
    with rt.load(bundles[key], artifact=art) as ref, \
            rt.load(bundles[key], artifact=art, backend="openvino",
                    options=rt.OpenVINOOptions(inference_precision="f32")) as m:
        assert m.info.backend == "openvino" and not m.info.fallback
        assert m.info.delegate == "CPU f32"
        assert ref.info.backend != "openvino"
        a, r = (next(iter(e.run(xs).values())) for e in (m, ref))
    assert a.shape == r.shape == (128, 10)
    # FP32 on both engines: float rounding only. INT8: the engines requantize intermediate tensors with
    # their own integer kernels, so an output may differ by a few steps of its 1/255 scale.
    np.testing.assert_allclose(a, r, atol=1e-4 if key == "fp32" else 3.5 / 255)
    assert float(np.mean(a.argmax(1) == r.argmax(1))) >= 0.99
    assert float(np.mean(a.argmax(1) == y[1300:1428])) > 0.85


def test_integer_io_tflite_takes_the_files_quantization(bundles):
    with rt.load(bundles["int8io"], artifact="tflite", backend="openvino") as m:
        spec = m.inputs[0]
        assert spec.dtype == np.int8 and spec.quantization is not None
        assert spec.quantization.scale[0] == pytest.approx(1 / 255, rel=1e-3)


def test_info_reports_device_precision_and_threads(bundles):
    with rt.load(bundles["int8"], artifact="onnx", backend="openvino", threads=2) as m:
        info = m.info
        assert info.device == "cpu" and info.threads == 2
        assert info.delegate.startswith("CPU ")  # and the float precision OpenVINO chose (bf16 on AMX)
        assert info.engine_version.startswith("202")
        assert info.to_dict()["backend"] == "openvino"


def test_missing_device_falls_back_or_raises_when_strict(bundles, caplog):
    if "GPU" in [d["name"] for d in ov_devices()["devices"]]:
        pytest.skip("this machine has an OpenVINO GPU")
    with caplog.at_level("WARNING", logger="edgeship.runtime"):
        m = rt.load(bundles["int8"], artifact="onnx", backend="openvino", device="gpu")
    assert m.info.fallback and m.info.device == "cpu"
    assert any("OpenVINO has no such device" in s for s in m.info.skipped)
    assert "running model.int8.onnx on CPU" in caplog.text
    m.close()
    with pytest.raises(FallbackError, match="strict=True"):
        rt.load(bundles["int8"], artifact="onnx", backend="openvino", device="gpu", strict=True)
    with pytest.raises(FallbackError, match="GPU.7"):
        OpenVINOBackend(rt.load(bundles["int8"], artifact="onnx").path,
                        rt.OpenVINOOptions(ov_device="GPU.7", strict=True))


def test_options_are_typed_and_checked():
    o = rt.OpenVINOOptions(performance_hint="throughput", inference_precision="bf16", threads=2)
    assert o.performance_hint.value == "throughput" and o.inference_precision.value == "bf16"
    with pytest.raises(InputError, match="performance_hint"):
        rt.OpenVINOOptions(performance_hint="fast")
    with pytest.raises(InputError, match="inference_precision"):
        rt.OpenVINOOptions(inference_precision="int4")
    with pytest.raises(InputError, match="ov_device"):
        rt.OpenVINOOptions(ov_device="")


def test_threads_in_parallel_get_the_same_results(bundles, digits):
    x, _ = digits
    m = rt.load(bundles["int8"], artifact="tflite", backend="openvino",
                options=rt.OpenVINOOptions(performance_hint="throughput"))
    want = [next(iter(m.run(x[i:i + 4]).values())) for i in range(0, 64, 4)]
    got: dict = {}
    errors: list = []

    def work(t):
        try:
            got[t] = [next(iter(m.run(x[i:i + 4]).values())) for i in range(0, 64, 4)]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for t in range(4):
        for a, b in zip(got[t], want):
            np.testing.assert_array_equal(a, b)
    m.close()
    with pytest.raises(ModelClosedError):
        m.run(x[:1])


def test_importing_the_runtime_does_not_import_openvino(bundles):
    code = ("import sys, json; import edgeship.runtime as rt; a = 'openvino' in sys.modules; "
            "m = rt.load(sys.argv[1]); m.run(m.inputs[0].shape and __import__('numpy').zeros((1, 8, 8, 1), 'f4')); "
            "b = 'openvino' in sys.modules; print(json.dumps([a, b, m.info.backend]))")
    out = subprocess.run([sys.executable, "-c", code, bundles["int8"]], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [False, False, "litert"]


def test_devices_lists_openvino_and_its_devices():
    from edgeship.cli.devices import format_devices
    from edgeship.runtime.discovery import devices

    report = devices(try_load=False)
    ov = report["openvino"]
    assert ov["available"] and "CPU" in [d["name"] for d in ov["devices"]]
    assert "openvino" not in [b["name"] for b in report["tflite"]]
    text = format_devices(report)
    assert "OpenVINO\n  yes CPU" in text and f"openvino {ov['version']}" in text
