"""The runtime core: the engine runs the bytes that were verified; close() vs run(); NaN/Inf into
integer models; device fallbacks; typed backend options; the runtime's layering."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import logging
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
try:
    import _tflite_fixtures as F
except ImportError:  # tests/ imported as a package
    from tests import _tflite_fixtures as F

import edgeship.runtime as rt
from edgeship.bundle import BundleWriter
from edgeship.errors import FallbackError, InputError, IntegrityError, ModelClosedError
from edgeship.runtime.backends import OrtOptions, TFLiteOptions

# the module that holds load()
load_mod = importlib.import_module("edgeship.runtime.loader")
RUNTIME = Path(__file__).resolve().parent.parent / "runtime"


@pytest.fixture(scope="module")
def fx():
    return F.models()


@pytest.fixture(scope="module")
def x8():
    return F.digits(4)[0]


def _bundle(tmp_path, src: str, name: str = "b") -> str:
    return F.write_bundle(str(tmp_path / name), {"model.tflite": (src, "fp32", "float")},
                          source_inputs=F.DIGITS_SOURCE_INPUTS, source_outputs=F.DIGITS_SOURCE_OUTPUTS)


def _swap(path: str, data: bytes) -> None:
    tmp = path + ".swap"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


# -- hash what runs ------------------------------------------------------------------------------


def test_file_swapped_between_verify_and_open_never_runs(fx, x8, tmp_path, monkeypatch):
    """The sha256 is checked on the bytes the engine gets: swapping the file after the check changes nothing."""
    bundle = _bundle(tmp_path, fx.path("fp32"))
    with rt.load(bundle) as m:
        good = m.run(x8)["probs"]
    with rt.load(fx.path("int8")) as other:
        evil = other.run(x8)[other.outputs[0].name]
    assert not np.array_equal(good, evil)
    evil_bytes = Path(fx.path("int8")).read_bytes()
    real_open = load_mod.open_backend
    swapped = []

    def swap_then_open(source, *args, **kwargs):  # runs after read_artifact verified the bytes
        _swap(os.path.join(bundle, "model.tflite"), evil_bytes)
        swapped.append(source.path)
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(load_mod, "open_backend", swap_then_open)
    with rt.load(bundle) as m:
        assert swapped and Path(bundle, "model.tflite").read_bytes() == evil_bytes
        np.testing.assert_array_equal(m.run(x8)["probs"], good)
    monkeypatch.undo()
    with pytest.raises(IntegrityError):  # the next load sees the swapped file and refuses it
        rt.load(bundle)


def test_file_swapped_in_a_loop_during_2000_loads_never_runs(fx, x8, tmp_path):
    bundle = _bundle(tmp_path, fx.path("fp32"))
    target = os.path.join(bundle, "model.tflite")
    good_bytes = Path(target).read_bytes()
    evil_bytes = Path(fx.path("dynamic")).read_bytes()  # another real model of the same I/O
    with rt.load(bundle, threads=1) as m:
        good = m.run(x8[:1])["probs"]
    with rt.load(fx.path("dynamic"), threads=1) as m:
        assert not np.array_equal(m.run(x8[:1])[m.outputs[0].name], good)
    stop = threading.Event()
    swaps = [0]

    def swapper():
        while not stop.is_set():
            _swap(target, evil_bytes if swaps[0] % 2 == 0 else good_bytes)
            swaps[0] += 1

    t = threading.Thread(target=swapper, daemon=True)
    t.start()
    ran = refused = wrong = 0
    try:
        for _ in range(2000):
            try:
                m = rt.load(bundle, threads=1)
            except IntegrityError:
                refused += 1
                continue
            with m:
                ran += 1
                wrong += not np.array_equal(m.run(x8[:1])["probs"], good)
    finally:
        stop.set()
        t.join(10)
    print(f"2000 loads: {ran} ran the verified model, {refused} refused (IntegrityError), {swaps[0]} swaps, "
          f"{wrong} ran the swapped model")
    assert wrong == 0, f"the swapped model ran {wrong} times in {ran} loads"
    assert ran > 0 and swaps[0] > 10, (ran, refused, swaps[0])


# -- close() racing run() ------------------------------------------------------------------------


def _race_close(model, x, name: str, rounds_threads: int = 6) -> list:
    errors: list = []
    started = threading.Barrier(rounds_threads + 1)

    def work():
        started.wait()
        while True:
            try:
                model.run(x)[name]
            except ModelClosedError:
                return
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(repr(exc))
                return

    ts = [threading.Thread(target=work) for _ in range(rounds_threads)]
    for t in ts:
        t.start()
    started.wait()
    model.close()
    for t in ts:
        t.join(30)
    assert not any(t.is_alive() for t in ts)
    return errors


@pytest.mark.parametrize("kind", ["int8", "fp32"])
def test_close_while_threads_run_tflite_raises_model_closed(fx, x8, kind):
    for _ in range(15):
        m = rt.load(fx.path(kind), threads=1)
        errors = _race_close(m, x8, m.outputs[0].name)
        assert not errors, errors
        with pytest.raises(ModelClosedError):
            m.run(x8)


def test_close_while_threads_run_onnx_raises_model_closed(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from test_onnx_common import conv_net

    path = tmp_path / "m.onnx"
    conv_net(path, batch=None)
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    for _ in range(15):
        m = rt.load(str(path), threads=1)
        errors = _race_close(m, x, m.outputs[0].name)
        assert not errors, errors
        with pytest.raises(ModelClosedError):
            m.run(x)


# -- NaN / Inf into an integer model -------------------------------------------------------------


def test_nan_or_inf_into_an_integer_model_is_an_input_error(fx, x8):
    with rt.load(fx.path("int8")) as m:
        name = m.inputs[0].name
        for bad in (np.nan, np.inf, -np.inf):
            x = x8.copy()
            x[1, 3, 4, 0] = bad
            with pytest.raises(InputError, match=f"input {name!r} contains NaN or Inf"):
                m.run(x)
        big = np.full_like(x8, 3e38)  # finite (its sum would overflow): not refused
        assert m.run(big)[m.outputs[0].name].shape == (4, 10)
    with rt.load(fx.path("int8"), check_finite=False) as m:
        x = x8.copy()
        x[0, 0, 0, 0] = np.nan
        assert np.isfinite(m.run(x)[m.outputs[0].name]).all()  # garbage, but the caller asked for it


def test_nan_into_a_float_model_shows_in_the_output(fx, x8):
    with rt.load(fx.path("fp32")) as m:
        x = x8.copy()
        x[0, 0, 0, 0] = np.nan
        y = m.run(x)[m.outputs[0].name]
    assert np.isnan(y[0]).all() and np.isfinite(y[1:]).all()


# -- devices -------------------------------------------------------------------------------------


def test_npu_without_one_falls_back_with_a_warning(fx, x8, caplog):
    with caplog.at_level(logging.WARNING, logger="edgeship.runtime"):
        with rt.load(fx.path("int8"), device="npu") as m:
            assert m.info.fallback and m.info.device == "cpu"
            assert any("npu" in s for s in m.info.skipped)
            m.run(x8)
    assert any("npu" in r.getMessage() and "CPU" in r.getMessage() for r in caplog.records)
    with pytest.raises(FallbackError, match="npu"):
        rt.load(fx.path("int8"), device="npu", strict=True)


def test_unknown_device_is_an_input_error_naming_the_choices(fx):
    with pytest.raises(InputError, match="npu"):
        rt.load(fx.path("int8"), device="tpu9000")


# -- typed options -------------------------------------------------------------------------------


def test_backend_options_are_frozen_and_checked():
    o = OrtOptions(device="gpu", providers="cuda")
    assert o.device.kind.value == "gpu" and o.providers == ("cuda",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.threads = 3
    with pytest.raises(InputError):
        OrtOptions(graph_optimization="max")
    with pytest.raises(InputError):
        TFLiteOptions(threads=0)
    t = TFLiteOptions(delegates=[("libx.so", {"a": 1})])
    assert t.delegates[0].library == "libx.so" and t.delegates[0].as_dict() == {"a": "1"}


def test_load_takes_typed_options_and_refuses_dicts(fx, x8):
    with rt.load(fx.path("fp32"), options=TFLiteOptions(threads=1)) as m:
        assert m.info.threads == 1
        m.run(x8)
    with pytest.raises(InputError, match="options"):
        rt.load(fx.path("fp32"), options={"threads": 1})


# -- ONNX: external data read once, bundles hash it -------------------------------------------------


def _external_onnx(folder: Path) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "ext", [x], [y], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="w.bin", size_threshold=0)
    return folder / "model.onnx"


def test_onnx_external_data_swapped_after_the_check_never_runs(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from edgeship.runtime.backends import onnxruntime as ort_backend

    path = _external_onnx(tmp_path / "m")
    real = ort_backend.read_external_data

    def read_then_swap(model_path, refs):
        out = real(model_path, refs)
        _swap(str(tmp_path / "m" / "w.bin"), np.full(4, 100.0, np.float32).tobytes())
        return out

    monkeypatch.setattr(ort_backend, "read_external_data", read_then_swap)
    with rt.load(str(path)) as m:
        y = m.run(np.zeros((1, 4), np.float32))["y"]
    np.testing.assert_array_equal(y, [[0, 1, 2, 3]])


def test_bundle_onnx_external_data_must_be_hashed_by_the_manifest(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeship.bundle import sha256_file

    src = _external_onnx(tmp_path / "src")
    tensors = {"inputs": [{"name": "x", "shape": [None, 4], "dtype": "float32", "quantization": None}],
               "outputs": [{"name": "y", "shape": [None, 4], "dtype": "float32", "quantization": None}]}

    def write(name: str, external: bool) -> str:
        with BundleWriter(str(tmp_path / name), force=True) as w:
            for f in ("model.onnx", "w.bin"):
                shutil.copyfile(src.parent / f, w.path(f))
            art = {"file": "model.onnx", "format": "onnx", "precision": "fp32", "io": "float", "layout": "other",
                   "targets": ["cpu"], **w.file_info("model.onnx"), **tensors, "notes": []}
            if external:
                art["external_data"] = [{"file": "w.bin", "sha256": sha256_file(w.path("w.bin"))}]
            return w.commit(F.make_manifest([art], source_layout="other", task="other"))

    with pytest.raises(IntegrityError, match="w.bin"):
        rt.load(write("unlisted", False))
    listed = write("listed", True)
    with rt.load(listed) as m:
        np.testing.assert_array_equal(m.run(np.zeros((1, 4), np.float32))["y"], [[0, 1, 2, 3]])
    Path(listed, "w.bin").write_bytes(np.full(4, 7.0, np.float32).tobytes())
    with pytest.raises(IntegrityError, match="w.bin"):
        rt.load(listed)


# -- layering ------------------------------------------------------------------------------------


def _imports(path: Path) -> list:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.append(("." * node.level + (node.module or ""), [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


CORE = ["loader.py", "select.py", "io_plan.py", "model.py", "discovery.py", "backends/__init__.py",
        "backends/base.py", "backends/registry.py", "backends/options.py", "backends/delegates.py",
        "backends/tflite.py", "backends/compiled_model.py", "backends/onnxruntime.py"]


def test_runtime_core_layering():
    for rel in CORE:
        path = RUNTIME / rel
        assert len(path.read_text().splitlines()) <= 500, f"{rel} is over 500 lines"
        for mod, names in _imports(path):
            parts = mod.lstrip(".").split(".")
            assert "discovery" not in parts or rel == "discovery.py", f"{rel} imports discovery (the top floor)"
            assert "converters" not in parts, f"{rel} imports the converters"
            assert not any(n.startswith("_") and not n.startswith("__") for n in names), \
                f"{rel} imports a private name {names} from {mod}"
            if rel.startswith("backends/"):
                assert mod.lstrip(".") not in ("load", "model", "select", "io_plan", "tasks"), \
                    f"{rel} imports {mod}: backends sit below the model"


def test_onnx_npu_without_one_falls_back_with_a_warning(tmp_path, caplog):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from test_onnx_common import conv_net

    path = tmp_path / "m.onnx"
    conv_net(path, batch=None)
    with caplog.at_level(logging.WARNING, logger="edgeship.runtime"):
        with rt.load(str(path), device="npu") as m:
            assert m.info.fallback and m.info.providers == ("CPUExecutionProvider",)
            assert any("QNNExecutionProvider" in s for s in m.info.skipped)
    assert any("QNNExecutionProvider" in r.getMessage() for r in caplog.records)
    with pytest.raises(FallbackError):
        rt.load(str(path), device="npu", strict=True)
    with rt.load(str(path), options=OrtOptions(providers=("cuda",), graph_optimization="basic")) as m:
        assert m.info.fallback and any("CUDAExecutionProvider" in s for s in m.info.skipped)


def test_cli_run_device_npu_prints_the_fallback_warning_and_strict_exits_2(fx, tmp_path):
    import subprocess

    import cv2

    img = tmp_path / "digit.png"
    cv2.imwrite(str(img), np.rint(F.digits(1)[0][0, :, :, 0] * 255).astype(np.uint8))
    env = dict(os.environ, EDGESHIP_ISOLATE="0")
    base = [sys.executable, "-m", "edgeship", "run", fx.path("int8"), str(img), "--device", "npu"]
    ok = subprocess.run(base, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert "npu" in ok.stderr and "CPU" in ok.stderr  # the warning, on stderr
    strict = subprocess.run(base + ["--strict"], capture_output=True, text=True, env=env, timeout=300)
    assert strict.returncode == 2
    assert "npu" in strict.stderr.strip().splitlines()[-1]


def test_nan_into_a_qdq_onnx_model_is_an_input_error(tmp_path):
    """INT8 QDQ ONNX files take float inputs and quantize them with their first QuantizeLinear."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "qdq.onnx"
    onnx.save(m, str(path))
    x = np.array([[0.1, np.nan, 0.3, np.inf]], np.float32)
    with rt.load(str(path)) as model:
        assert model.inputs[0].dtype == np.float32
        with pytest.raises(InputError, match="'x' contains NaN or Inf"):
            model.run(x)
        np.testing.assert_allclose(model.run(np.array([[0.1, 0.2, 0.3, 0.4]], np.float32))["y"],
                                   [[0.1, 0.2, 0.3, 0.4]], atol=0.03)
    with rt.load(str(path), check_finite=False) as model:
        assert np.isfinite(model.run(x)["y"]).all()  # what the check prevents: NaN became a number


def test_nan_into_an_int8_tflite_with_float_io_is_an_input_error(fx, x8, tmp_path):
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(fx.keras["cnn"])
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x8[i:i + 1]] for i in range(len(x8)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # float I/O, INT8 inside
    path = tmp_path / "int8_float_io.tflite"
    path.write_bytes(conv.convert())
    x = x8.copy()
    x[0, 0, 0, 0] = np.nan
    with rt.load(str(path)) as m:
        assert m.inputs[0].dtype == np.float32
        with pytest.raises(InputError, match="contains NaN or Inf"):
            m.run(x)
        assert m.run(x8)[m.outputs[0].name].shape == (4, 10)
    with rt.load(fx.path("fp32")) as m:  # a float model has no QUANTIZE op: no check, NaN stays visible
        assert np.isnan(m.run(x)[m.outputs[0].name][0]).all()


def test_one_rule_turns_options_into_a_backends_own():
    from edgeship.runtime.backends.options import CompiledModelOptions, OrtOptions, options_for

    assert options_for(None, OrtOptions, "onnxruntime") == OrtOptions()
    own = OrtOptions(threads=2)
    assert options_for(own, OrtOptions, "onnxruntime") is own
    moved = options_for(TFLiteOptions(threads=1, strict=True), OrtOptions, "onnxruntime")
    assert type(moved) is OrtOptions and moved.threads == 1 and moved.strict is True
    tfl = TFLiteOptions(delegates=[("libx.so", {"a": 1})])
    cm = options_for(tfl, CompiledModelOptions, "litert_compiled", delegates=tfl.delegates)
    assert cm.delegates == tfl.delegates
    with pytest.raises(InputError, match="onnxruntime backend takes OrtOptions, got dict"):
        options_for({"threads": 1}, OrtOptions, "onnxruntime")
