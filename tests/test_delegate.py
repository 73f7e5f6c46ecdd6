"""TFLite external delegates, for real: a tiny C delegate built with gcc in the test.

``tests/delegate/dummy_delegate.c`` exposes ``tflite_plugin_create_delegate`` /
``tflite_plugin_destroy_delegate`` (like TensorFlow Lite's dummy external
delegate), reads its options, claims the float32 ADD/MUL/SUB nodes it is told
to, computes them itself, and reports what it claimed (a report file and C
counters read with ctypes). The runtime loads it through the same
``load_delegate`` path as ``libedgetpu.so.1`` and must give the same account.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess

import numpy as np
import pytest

import edgeship.runtime as rt
from edgeship.errors import FallbackError, InputError
from edgeship.runtime.backends.delegates import normalize_delegates, parse_delegate_spec

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "delegate", "dummy_delegate.c")
X = np.array([[0.5, -1.0, 2.0, 3.0], [1.0, 2.0, -3.0, 0.25]], np.float32)


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> str:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the test delegate")
    out = str(tmp_path_factory.mktemp("delegate") / "libedgeship_dummy_delegate.so")
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", out, SOURCE], check=True,
                   capture_output=True, text=True)
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    """5 ops: ADD, MUL, SUB(+fused RELU), TANH, ADD; float32, batch 1 signature (dynamic batch)."""
    import tensorflow as tf  # noqa: PLC0415

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    def f(x):
        y = x + tf.constant([1.0, 2.0, 3.0, 4.0])
        z = y * x
        w = tf.nn.relu(z - tf.constant(2.0))
        return {"out": tf.tanh(w) + w}

    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    path = str(tmp_path_factory.mktemp("model") / "arith.tflite")
    with open(path, "wb") as fh:
        fh.write(conv.convert())
    return path


def _expected(x):
    w = np.maximum((x + np.array([1, 2, 3, 4], np.float32)) * x - 2.0, 0.0)
    return np.tanh(w) + w


def _counters(lib_path):
    c = ctypes.CDLL(lib_path)  # same handle as the one load_delegate opened
    c.dummy_evaluated_nodes.restype = ctypes.c_long
    return c


def _report(path) -> dict:
    with open(path) as fh:
        return dict(item.split("=", 1) for item in fh.read().split())


def _run_rows(m, x):
    return np.concatenate([next(iter(m.run(x[i:i + 1]).values())) for i in range(len(x))])


@pytest.mark.parametrize("ops,claimed,partitions", [
    ("ADD", 2, 2),          # nodes 0 and 4, not adjacent: two delegate kernels
    ("ADD,MUL", 3, 2),      # 0+1 form one partition, 4 another
    ("MUL,SUB", 1, 1),      # SUB has a fused RELU: the delegate refuses it
    ("0,18,41", 3, 2),      # builtin codes work like names
])
def test_delegate_claims_match_runtime_account(lib, model, tmp_path, ops, claimed, partitions):
    report = tmp_path / "report.txt"
    c = _counters(lib)
    with rt.load(model, delegate=f"{lib}:ops={ops},report={report}", strict=True) as m:
        info = m.info
        rep = _report(report)
        assert int(rep["claimed"]) == claimed == c.dummy_claimed_nodes()
        assert int(rep["partitions"]) == partitions == c.dummy_partitions()
        assert info.ops_delegated == claimed
        assert info.ops_total == 5
        assert info.delegate == os.path.basename(lib)
        assert info.device == "delegate"
        assert info.fallback is False and info.skipped == ()
        before = c.dummy_evaluated_nodes()
        out = _run_rows(m, X)
        # the delegate's own kernel computed the claimed nodes, once per row
        assert c.dummy_evaluated_nodes() - before == claimed * len(X)
    np.testing.assert_allclose(out, _expected(X), rtol=1e-6, atol=1e-6)
    with rt.load(model, strict=True) as cpu:
        assert cpu.info.delegate is None and cpu.info.ops_delegated == 0 and cpu.info.ops_total == 5
        np.testing.assert_array_equal(out, _run_rows(cpu, X))


def test_delegate_with_batches(lib, model, tmp_path):
    """A whole batch at once: the interpreter is resized and the delegate re-applied."""
    big = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    c = _counters(lib)
    with rt.load(model, delegate=f"{lib}:ops=ADD,MUL", strict=True) as m:
        before = c.dummy_evaluated_nodes()
        out = next(iter(m.run(big).values()))
        assert c.dummy_evaluated_nodes() > before
        assert m.info.ops_delegated == 3
    np.testing.assert_allclose(out, _expected(big), rtol=1e-6, atol=1e-6)


def test_delegate_as_path_and_options_pair(lib, model, tmp_path):
    report = tmp_path / "r.txt"
    with rt.load(model, delegate=[(lib, {"ops": "MUL", "report": str(report)})]) as m:
        assert m.info.ops_delegated == 1 == int(_report(report)["claimed"])


def test_failing_delegate_strict_raises(lib, model):
    with pytest.raises(FallbackError, match="creation failed because fail=1"):
        rt.load(model, delegate=f"{lib}:fail=1", strict=True)


def test_failing_delegate_default_warns_once_and_runs_on_cpu(lib, model, caplog):
    with caplog.at_level(logging.WARNING, logger="edgeship.runtime"):
        with rt.load(model, delegate=f"{lib}:fail=1") as m:
            out = _run_rows(m, X)
            info = m.info
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "fail=1" in warnings[0].getMessage() and "CPU" in warnings[0].getMessage()
    assert info.fallback is True and info.delegate is None and info.device == "cpu"
    assert any("fail=1" in s for s in info.skipped)
    np.testing.assert_allclose(out, _expected(X), rtol=1e-6, atol=1e-6)


def test_delegate_that_takes_nothing_is_a_fallback(lib, model, caplog):
    # TANH (code 28) is not something this delegate can compute: loaded, but it takes no node.
    with pytest.raises(FallbackError, match="took none of the 5 ops"):
        rt.load(model, delegate=f"{lib}:ops=28", strict=True)
    with caplog.at_level(logging.WARNING, logger="edgeship.runtime"):
        with rt.load(model, delegate=f"{lib}:ops=28") as m:
            assert m.info.fallback is True and m.info.ops_delegated == 0
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_unknown_option_reaches_the_delegate(lib, model):
    with pytest.raises(FallbackError, match="unknown option"):
        rt.load(model, delegate=f"{lib}:colour=blue", strict=True)


def test_missing_library(model, tmp_path, caplog):
    missing = str(tmp_path / "libnothing.so")
    with pytest.raises(FallbackError, match="libnothing.so"):
        rt.load(model, delegate=missing, strict=True)
    with caplog.at_level(logging.WARNING, logger="edgeship.runtime"):
        with rt.load(model, delegate=missing) as m:
            assert m.info.fallback and m.info.delegate is None
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1


def test_parse_delegate_spec():
    assert parse_delegate_spec("/a/b.so") == ("/a/b.so", {})
    assert parse_delegate_spec("/a/b.so:ops=ADD,MUL,report=/tmp/x") == ("/a/b.so", {"ops": "ADD,MUL",
                                                                                      "report": "/tmp/x"})
    assert parse_delegate_spec("libedgetpu.so.1:device=usb:0") == ("libedgetpu.so.1", {"device": "usb:0"})
    assert parse_delegate_spec(r"C:\d\edgetpu.dll:device=pci:0") == (r"C:\d\edgetpu.dll", {"device": "pci:0"})
    with pytest.raises(InputError):
        parse_delegate_spec("")
    with pytest.raises(InputError):
        parse_delegate_spec(":ops=ADD")
    with pytest.raises(InputError):
        normalize_delegates(42)
    assert normalize_delegates(None) == []
    assert normalize_delegates(["x.so", ("y.so", {"a": 1})]) == [("x.so", {}), ("y.so", {"a": "1"})]


def test_cli_delegate_flag_reaches_the_delegate(lib, model, tmp_path):
    import argparse  # noqa: PLC0415

    from edgeship.cli.common import add_accel_arguments, describe_info, load_kwargs  # noqa: PLC0415

    p = argparse.ArgumentParser()
    add_accel_arguments(p)
    report = tmp_path / "cli.txt"
    args = p.parse_args(["--delegate", f"{lib}:ops=ADD,MUL,report={report}", "--strict"])
    with rt.load(model, **load_kwargs(args)) as m:
        line = describe_info(m.info)
    assert int(_report(report)["claimed"]) == 3
    assert f"delegate {os.path.basename(lib)} (3/5 ops, 60%)" in line and "FALLBACK" not in line


_EDGETPU_CHILD = r"""
import ctypes, json, logging, sys
import numpy as np
import edgeship.runtime as rt
from edgeship.errors import FallbackError
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
bundle, strict = sys.argv[1], sys.argv[2] == "1"
try:
    m = rt.load(bundle, device="edgetpu:usb:0", strict=strict)
except FallbackError as e:
    print(json.dumps({"error": str(e)}))
    sys.exit(0)
x = np.array([[0.5, -1.0, 2.0, 3.0]], np.float32)
d = {"file": m.artifact["file"], "info": m.info.to_dict(), "out": next(iter(m.run(x).values())).tolist()}
try:
    d["claimed"] = ctypes.CDLL("libedgetpu.so.1").dummy_claimed_nodes()
except OSError:
    pass
print(json.dumps(d))
"""


def test_edgetpu_device_path_with_the_test_delegate_as_libedgetpu(lib, model, tmp_path):
    """device='edgetpu:usb:0' finds 'libedgetpu.so.1' by name on the library path, passes device=usb:0,
    runs the _edgetpu artifact through it and reports it; without the library, the CPU artifact
    runs after one warning, and strict=True refuses."""
    import json  # noqa: PLC0415
    import sys  # noqa: PLC0415

    try:
        import _tflite_fixtures as F  # noqa: PLC0415
    except ImportError:
        from tests import _tflite_fixtures as F  # noqa: PLC0415
    bundle = F.write_bundle(str(tmp_path / "b"), {"model.fp32.tflite": (model, "fp32", "float"),
                                                  "model_edgetpu.tflite": (model, "fp32", "float")}, task="other")
    libdir = tmp_path / "libs"
    libdir.mkdir()
    shutil.copyfile(lib, libdir / "libedgetpu.so.1")

    def child(strict: bool, with_lib: bool) -> tuple[dict, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = str(libdir) if with_lib else str(tmp_path / "empty")
        p = subprocess.run([sys.executable, "-c", _EDGETPU_CHILD, bundle, "1" if strict else "0"], env=env,
                           capture_output=True, text=True, timeout=120, check=True)
        return json.loads(p.stdout.strip().splitlines()[-1]), p.stderr

    on_tpu, _ = child(strict=True, with_lib=True)
    assert on_tpu["file"] == "model_edgetpu.tflite"
    info = on_tpu["info"]
    assert info["delegate"] == "libedgetpu.so.1" and info["device"] == "edgetpu" and not info["fallback"]
    assert info["ops_delegated"] == on_tpu["claimed"] == 2 and info["ops_total"] == 5
    np.testing.assert_allclose(on_tpu["out"], _expected(np.array([[0.5, -1.0, 2.0, 3.0]], np.float32)), rtol=1e-6)

    refused, _ = child(strict=True, with_lib=False)
    assert "libedgetpu.so.1" in refused["error"] and "cannot open shared object" in refused["error"]
    assert "strict=True" in refused["error"]

    fallback, stderr = child(strict=False, with_lib=False)
    assert fallback["file"] == "model.fp32.tflite" and fallback["info"]["fallback"] is True
    assert fallback["info"]["delegate"] is None
    assert any("Edge TPU" in s for s in fallback["info"]["skipped"])
    assert "libedgetpu.so.1" in " ".join(fallback["info"]["skipped"])
    warnings = [ln for ln in stderr.splitlines() if ln.startswith("WARNING:edgeship")]
    assert len(warnings) == 1, stderr[-2000:]  # one clear warning, with the reason
    assert "libedgetpu.so.1" in warnings[0] and "CPU artifact" in warnings[0]
