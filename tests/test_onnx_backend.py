"""The ONNX Runtime backend: runs models, reports providers, strict fallback."""

from __future__ import annotations

import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
from test_onnx_common import conv_net, digits_like, reference_run  # noqa: E402

from edgeship.errors import FallbackError, InputError  # noqa: E402
from edgeship.runtime import backends  # noqa: E402
from edgeship.runtime.backends import OrtOptions  # noqa: E402
from edgeship.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("ort") / "net.onnx"
    conv_net(p, batch=None)
    return str(p)


def test_registered_and_available():
    entry = backends.get("onnxruntime")
    assert entry.loader() is OnnxRuntimeBackend
    ok, why = OnnxRuntimeBackend.available()
    assert ok and why == ""
    assert OnnxRuntimeBackend.thread_safe


def test_runs_and_matches_reference(model_path):
    be = OnnxRuntimeBackend(model_path, OrtOptions(threads=1))
    assert [t.name for t in be.inputs] == ["input"]
    assert be.inputs[0].shape == (None, 3, 8, 8)
    assert be.inputs[0].dtype == np.float32 and be.outputs[0].dtype == np.float32
    x = digits_like(3)
    (y,) = be.invoke([x])
    np.testing.assert_allclose(y, reference_run(model_path, x), atol=1e-6)
    assert be.resize_batch(7)
    be.close()
    be.close()


def test_info_reports_providers_in_use(model_path):
    be = OnnxRuntimeBackend(model_path, OrtOptions(threads=2))
    info = be.info
    assert info.backend == "onnxruntime"
    assert info.providers == ("CPUExecutionProvider",)
    assert info.delegate == "CPUExecutionProvider"
    assert info.threads == 2
    assert not info.fallback
    # providers this build does not have are listed with a reason
    assert any(s.startswith("TensorrtExecutionProvider: not available") for s in info.skipped)
    assert any(s.startswith("CUDAExecutionProvider: not available") for s in info.skipped)
    assert info.to_dict()["providers"] == ["CPUExecutionProvider"]


def test_cpu_device_is_not_a_fallback(model_path):
    be = OnnxRuntimeBackend(model_path, OrtOptions(strict=True, device="cpu"))
    assert be.info.providers == ("CPUExecutionProvider",) and not be.info.fallback


def test_missing_provider_falls_back_or_raises_when_strict(model_path):
    be = OnnxRuntimeBackend(model_path, OrtOptions(providers=("cuda",)))
    assert be.info.fallback and be.info.providers == ("CPUExecutionProvider",)
    assert any("CUDAExecutionProvider" in s for s in be.info.skipped)
    with pytest.raises(FallbackError, match="CUDAExecutionProvider"):
        OnnxRuntimeBackend(model_path, OrtOptions(strict=True, providers=("cuda",)))
    with pytest.raises(FallbackError, match="TensorrtExecutionProvider"):
        OnnxRuntimeBackend(model_path, OrtOptions(strict=True, providers=("tensorrt",)))


def test_unknown_device_is_input_error(model_path):
    with pytest.raises(InputError, match="device 'abacus'"):
        OnnxRuntimeBackend(model_path, OrtOptions(device="abacus"))


def test_fixed_batch_cannot_resize(tmp_path):
    p = tmp_path / "b1.onnx"
    conv_net(p)
    be = OnnxRuntimeBackend(str(p))
    assert be.resize_batch(1) and not be.resize_batch(4)
    with pytest.raises(InputError):
        be.invoke([digits_like(4)])


def test_one_session_many_threads(model_path):
    be = OnnxRuntimeBackend(model_path, OrtOptions(threads=1))
    xs = [digits_like(2, seed=i) for i in range(8)]
    want = [reference_run(model_path, x) for x in xs]
    got = [None] * len(xs)

    def work(i):
        for _ in range(5):
            got[i] = be.invoke([xs[i]])[0]

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-6)


def test_backend_module_does_not_import_onnx(model_path, import_blocker):
    code = import_blocker(("onnx", "tensorflow", "tf2onnx", "onnx2tf", "tf_keras", "keras")) + (
        "import numpy as np\n"
        "from edgeship.runtime.backends.onnxruntime import OnnxRuntimeBackend\n"
        f"be = OnnxRuntimeBackend({model_path!r})\n"
        "print(be.invoke([np.zeros((2, 3, 8, 8), np.float32)])[0].shape)\n"
        "assert blocked_loaded() == [], blocked_loaded()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "(2, 4)"
