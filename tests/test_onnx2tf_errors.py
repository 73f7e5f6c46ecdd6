"""onnx2tf failures (issue 12): refused or reported in one line naming the node and op and
what to try, never "ValueError: in user code:"; exact rewrites for ops onnx2tf lacks.

Small real ONNX graphs built with onnx.helper, run by ONNX Runtime (so they are valid
models), each with one op onnx2tf cannot convert: LpPool (no converter at all), GridSample
in bicubic mode (onnx2tf exits), Einsum with a diagonal (TensorFlow raises inside onnx2tf);
and CastLike, which onnx2tf lacks but edgeship rewrites into Cast.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from test_cli_claims_common import cli_capture, one_error_line

RNG = np.random.default_rng(0)


def _graph(path, nodes, inits, out_shape, *, opset=17):
    """x [1,3,16,16] -> Conv(4 filters) -> ``nodes`` (reading 'c', writing 'y')."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    inits = {"w": RNG.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "b": np.zeros(4, np.float32), **inits}
    g = h.make_graph([h.make_node("Conv", ["x", "w", "b"], ["c"], name="stem/conv", pads=[1, 1, 1, 1])] + nodes,
                     "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 3, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, out_shape)],
                     [nh.from_array(v, k) for k, v in inits.items()])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.zeros((1, 3, 16, 16), np.float32)})  # a valid model: ONNX Runtime runs it
    return str(path)


def _calib(tmp_path):
    p = tmp_path / "calib.npy"
    np.save(p, RNG.uniform(0, 1, (16, 3, 16, 16)).astype(np.float32))
    return str(p)


def _convert(capfd, tmp_path, model, *extra):
    out = tmp_path / "bundle"
    rc, _, err = cli_capture(capfd, "convert", model, "-o", out, "--calib", _calib(tmp_path), "--precision", "fp32",
                             "--task", "other", *extra)
    return rc, err, out


@pytest.mark.slow  # runs onnx2tf
def test_op_without_a_converter_is_refused_in_one_line_and_formats_onnx_works(tmp_path, capfd):
    from onnx import helper as h

    model = _graph(tmp_path / "lppool.onnx", [
        h.make_node("LpPool", ["c"], ["p"], name="rare/lppool", kernel_shape=[2, 2], strides=[2, 2], p=2),
        h.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        h.make_node("Flatten", ["g"], ["y"], name="flat"),
    ], {}, [1, 4], opset=18)
    rc, err, out = _convert(capfd, tmp_path, model, "--formats", "tflite")
    line = one_error_line(err)
    assert rc == 2
    assert "'rare/lppool'" in line and "(op LpPool)" in line and "--formats onnx" in line, line
    assert "in user code" not in line
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".bundle")]
    # what the line says to try works
    rc, err, out = _convert(capfd, tmp_path, model, "--formats", "onnx")
    assert rc == 0, err[-2000:]
    assert (out / "manifest.json").is_file()


@pytest.mark.slow  # runs onnx2tf
@pytest.mark.parametrize("case", ["gridsample", "einsum"])
def test_failure_inside_onnx2tf_names_the_node_and_op(tmp_path, capfd, case):
    from onnx import helper as h

    if case == "gridsample":  # onnx2tf logs an error and calls sys.exit(1)
        grid = RNG.uniform(-1, 1, (1, 16, 16, 2)).astype(np.float32)
        nodes = [h.make_node("GridSample", ["c", "grid"], ["y"], name="warp/grid_sample", mode="bicubic")]
        model = _graph(tmp_path / "gs.onnx", nodes, {"grid": grid}, [1, 4, 16, 16], opset=16)
        want = ("'warp/grid_sample'", "(op GridSample)", "bilinear")
    else:  # TensorFlow raises a ValueError "in user code:" inside onnx2tf
        nodes = [h.make_node("Einsum", ["c"], ["y"], name="head/einsum", equation="bcii->bci")]
        model = _graph(tmp_path / "ein.onnx", nodes, {}, [1, 4, 16])
        want = ("'head/einsum'", "(op Einsum)", "ValueError")
    rc, err, out = _convert(capfd, tmp_path, model, "--formats", "tflite")
    line = one_error_line(err)
    assert rc == 2
    for w in want:
        assert w in line, line
    assert "after graph clean-up" in line and "--formats onnx" in line, line
    assert not out.exists()


@pytest.mark.slow  # runs onnx2tf
def test_castlike_is_rewritten_into_cast_and_converts(tmp_path):
    import edgeship
    from onnx import helper as h

    model = _graph(tmp_path / "castlike.onnx", [
        h.make_node("CastLike", ["c", "like"], ["y"], name="amp/castlike"),
    ], {"like": np.zeros((1,), np.float32)}, [1, 4, 16, 16])
    from edgeship.converters.onnx2tf_prep import onnx2tf_ops

    assert "CastLike" not in onnx2tf_ops()  # else this test proves nothing
    res = edgeship.convert(model, str(tmp_path / "b"), calib=np.load(_calib(tmp_path)), precision="fp32",
                           formats="tflite", task="other")
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    text = json.dumps(man)
    assert "CastLike" in text and "rewritten into Cast" in text
    err = man["artifacts"][0].get("extra", {}).get("onnx_to_tflite", {}).get("float_max_abs_error")
    if err is None:
        err = man["settings"]["onnx_to_tflite"]["float_max_abs_error"]
    assert err < 1e-3
    assert res is not None


def test_failed_node_reads_onnx2tf_names_back():
    from onnx import helper as h

    from edgeship.converters.onnx2tf_prep import failed_node, reason_of

    g = h.make_graph([h.make_node("Relu", ["x"], ["y"], name="/model.22/act:0")], "g", [], [])
    model = h.make_model(g)
    exc = ValueError("in user code:\n\n    File \"x.py\", line 1\n\n    Dimensions must be equal, but are 3 and 4")
    exc.onnx_op_name = "wa/model.22/act__0"  # as onnx2tf sanitises it
    assert failed_node(exc, model) == ("/model.22/act:0", "Relu")
    assert reason_of(exc) == "ValueError: Dimensions must be equal, but are 3 and 4"
    assert failed_node(RuntimeError("x"), model, "ERROR: onnx_op_name: /model.22/act:0\n") == ("/model.22/act:0", "Relu")


def test_swish_rewrite_computes_the_same_in_onnx_runtime():
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper as h

    from edgeship.converters.onnx2tf_prep import rewrite_known_ops, unsupported_nodes

    g = h.make_graph([h.make_node("Swish", ["x"], ["y"], name="act/swish", alpha=0.5)], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 64])], [h.make_tensor_value_info("y", T.FLOAT, [1, 64])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 24)])
    m.ir_version = 10
    x = {"x": RNG.normal(0, 3, (1, 64)).astype(np.float32)}
    run = lambda model: ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]  # noqa: E731
    before = run(m)
    assert [op for _, op, _ in unsupported_nodes(m)] == ["Swish"]
    assert rewrite_known_ops(m) == ["onnx2tf has no Swish: 1 node(s) rewritten into Mul(x, Sigmoid(alpha*x))"]
    onnx.checker.check_model(m)
    assert unsupported_nodes(m) == []
    np.testing.assert_allclose(run(m), before, rtol=1e-6, atol=1e-6)
