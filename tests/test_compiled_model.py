"""The litert_compiled backend (LiteRT CompiledModel API) on real TFLite models built in the test."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

try:
    import _tflite_fixtures as F
except ImportError:  # tests/ imported as a package
    from tests import _tflite_fixtures as F

import edgeship.runtime as rt
from edgeship.errors import FallbackError
from edgeship.runtime import backends as _backends

pytest.importorskip("ai_edge_litert.compiled_model")


@pytest.fixture(scope="module")
def fx():
    return F.models()  # fp32 and full INT8 (int8 I/O, fixed representative dataset) from a tiny Keras CNN


@pytest.fixture(scope="module")
def x():
    return F.digits(5)[0]


def test_registered_below_litert():
    prio = {e.name: e.priority for e in _backends.registered("tflite")}
    assert prio["litert_compiled"] < prio["litert"]
    assert _backends.registered("tflite")[0].name == "litert"


@pytest.mark.parametrize("key,tol", [("fp32", 1e-5), ("int8", 0.0)])
def test_cpu_matches_interpreter(fx, x, key, tol):
    with rt.load(fx.path(key)) as ref, rt.load(fx.path(key), backend="litert_compiled") as m:
        assert ref.info.backend == "litert"
        assert m.info.backend == "litert_compiled"
        assert m.info.device == "cpu" and not m.info.fallback
        # LiteRT's own answer, passed through: a bare CompiledModel on the CPU accelerator says the same
        assert m.info.fully_accelerated is _bare_fully_accelerated(fx.path(key))
        assert m.info.to_dict()["fully_accelerated"] is m.info.fully_accelerated
        for a, b in zip(m._backend.inputs + m._backend.outputs, ref._backend.inputs + ref._backend.outputs):
            assert (a.name, a.dtype, a.scale, a.zero_point) == (b.name, b.dtype, b.scale, b.zero_point)
        if key == "int8":
            assert m._backend.inputs[0].dtype == np.int8 and m._backend.inputs[0].scale
        for batch in (x[:1], x[:3]):  # batch 3: the Model loops per sample
            got, want = m.run(batch), ref.run(batch)
            assert list(got) == list(want)
            for k in want:
                assert got[k].shape == want[k].shape == (len(batch), 10)
                if tol:
                    np.testing.assert_allclose(got[k], want[k], atol=tol, rtol=1e-5)
                else:
                    np.testing.assert_array_equal(got[k], want[k])


def _bare_fully_accelerated(path) -> bool:
    from ai_edge_litert.compiled_model import CompiledModel
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator
    from ai_edge_litert.options import Options

    cm = CompiledModel.from_file(path, options=Options(hardware_accelerators=HardwareAccelerator["CPU"]))
    return bool(cm.is_fully_accelerated())


def test_int8_raw_outputs_exact(fx, x):
    with rt.load(fx.path("int8")) as ref, rt.load(fx.path("int8"), backend="litert_compiled") as m:
        raw = m._backend.inputs[0]
        q = np.clip(np.round(x[:1] / raw.scale[0] + raw.zero_point[0]), -128, 127).astype(np.int8)
        np.testing.assert_array_equal(m._backend.invoke([q])[0], ref._backend.invoke([q])[0])


def test_two_inputs_outputs_order(fx):
    rng = np.random.default_rng(0)
    with rt.load(fx.path("two_fp32")) as ref, rt.load(fx.path("two_fp32"), backend="litert_compiled") as m:
        raws = [rng.random((1,) + tuple(t.shape[1:]), dtype=np.float32) for t in ref._backend.inputs]
        assert [t.name for t in m._backend.inputs] == [t.name for t in ref._backend.inputs]
        for g, w in zip(m._backend.invoke(raws), ref._backend.invoke(raws)):
            np.testing.assert_allclose(g, w, atol=1e-5)


def _gpu_usable() -> bool:
    from edgeship.runtime.backends.compiled_model import probe_compiled_model

    return probe_compiled_model(F.models().path("fp32"), "gpu")["usable"]


def test_gpu_falls_back_with_reason(fx, x, caplog):
    if _gpu_usable():
        pytest.skip("a GPU is usable here")
    with caplog.at_level(logging.WARNING, logger="edgeship.runtime"):
        m = rt.load(fx.path("fp32"), backend="litert_compiled", device="gpu")
    with m:
        assert m.info.fallback and m.info.device == "cpu"
        assert m.info.skipped and m.info.skipped[0].startswith("gpu:")
        assert any("running on the CPU instead" in r.getMessage() for r in caplog.records)
        assert [v.shape for v in m.run(x[:2]).values()] == [(2, 10)]
        assert m.info.fully_accelerated is False  # it runs on the CPU accelerator, nothing offloaded
    # The reason is LiteRT's own words (here: no Vulkan / no adapters), beyond edgeship's "gpu:" tag.
    text = m.info.skipped[0][len("gpu:"):].lower()
    assert any(w in text for w in ("vulkan", "adapter", "webgpu", "opencl", "delegate")), text


def test_gpu_strict_raises(fx):
    if _gpu_usable():
        pytest.skip("a GPU is usable here")
    with pytest.raises(FallbackError, match="GPU"):
        rt.load(fx.path("fp32"), backend="litert_compiled", device="gpu", strict=True)


def test_npu_falls_back(fx):
    with rt.load(fx.path("int8"), backend="litert_compiled", device="npu") as m:
        if m.info.device == "npu":
            pytest.skip("an NPU is usable here")
        assert m.info.fallback and m.info.skipped[0].startswith("npu:")


def test_unknown_device(fx):
    with pytest.raises(rt_input_error()):
        rt.load(fx.path("fp32"), backend="litert_compiled", device="tpu")


def rt_input_error():
    from edgeship.errors import InputError

    return InputError


def test_import_stays_light():
    code = ("import sys, edgeship.runtime, edgeship.runtime.backends; "
            "print(any(m.startswith('ai_edge_litert') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
