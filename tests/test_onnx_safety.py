"""Hostile external data is refused before anything outside the model folder is read."""

from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from _shared import build_external_data_model as _external_model  # noqa: E402
from edgeship.errors import EdgeshipError, ModelFormatError, UnsafeModelError  # noqa: E402
from edgeship.converters import onnx_safety  # noqa: E402
from edgeship import onnx_policy  # noqa: E402
from edgeship.runtime.backends import onnxruntime as ort_backend  # noqa: E402

_GUARD = [[]]


@pytest.fixture(autouse=True)
def no_external_reads(monkeypatch):
    """Nothing may load external data or open a session on a model that is refused.

    ``onnx.load`` is allowed only with ``load_external_data=False`` and any
    ``InferenceSession`` created is recorded; tests of refused models assert
    that the list stays empty (the check raised before anything read the data).
    Plain ``open()`` calls are caught by the ``canary`` fixture's audit hook.
    """
    import onnxruntime

    real_load = onnx.load
    sessions = []

    def guarded_load(f, *a, **kw):
        if kw.get("load_external_data", True):
            sessions.append(("onnx.load", f))
        return real_load(f, *a, **kw)

    real_session = onnxruntime.InferenceSession

    def guarded_session(model, *a, **kw):
        sessions.append(("InferenceSession", model if isinstance(model, str) else "<bytes>"))
        return real_session(model, *a, **kw)

    _GUARD[0] = sessions
    monkeypatch.setattr(onnx, "load", guarded_load)
    monkeypatch.setattr(onnxruntime, "InferenceSession", guarded_session)
    return sessions


def _refuse_all(path, match, canary=None):
    """Every entry point refuses ``path``; the canary (if any) is never opened, by anyone, as any user."""
    _both_refuse(path, match)
    if canary is not None:
        assert canary.opened == [], canary.opened


def _both_refuse(path, match):
    with pytest.raises(UnsafeModelError, match=match) as e1:
        onnx_safety.check_onnx_file(path)
    assert "'w'" in str(e1.value)
    with pytest.raises(UnsafeModelError, match=match):
        onnx_policy.read_checked_model(path)
    with pytest.raises(UnsafeModelError, match=match):
        ort_backend.OnnxRuntimeBackend(path)
    assert isinstance(e1.value, EdgeshipError) and e1.value.exit_code == 2
    # the autouse guard recorded no external-data load and no session
    assert _GUARD[0] == [], _GUARD[0]


@pytest.mark.parametrize("where", ["initializer", "attribute", "subgraph"])
def test_absolute_path_refused(tmp_path, canary, where):
    path = _external_model(tmp_path / "m", str(canary.path), where=where)
    _refuse_all(path, "absolute", canary)


@pytest.mark.parametrize("where", ["initializer", "attribute", "subgraph"])
def test_dotdot_refused(tmp_path, canary, where):
    path = _external_model(tmp_path / "m", "../secret.bin", where=where)
    _refuse_all(path, r"'\.\.'", canary)


def test_nested_dotdot_refused(tmp_path, canary):
    (tmp_path / "m" / "a").mkdir(parents=True)
    path = _external_model(tmp_path / "m", "a/../../secret.bin")
    _refuse_all(path, r"'\.\.'", canary)


def test_backslash_dotdot_refused(tmp_path, canary):
    path = _external_model(tmp_path / "m", "..\\secret.bin")
    _refuse_all(path, r"'\.\.'", canary)


def test_symlink_last_component_refused(tmp_path, canary):
    path = _external_model(tmp_path / "m", "w.bin")
    os.symlink(canary.path, tmp_path / "m" / "w.bin")
    _refuse_all(path, "symbolic link", canary)


def test_symlink_parent_component_refused(tmp_path, canary):
    path = _external_model(tmp_path / "m", "d/secret.bin")
    os.symlink(tmp_path, tmp_path / "m" / "d")
    _refuse_all(path, "symbolic link", canary)


def test_hard_link_refused(tmp_path, canary):
    path = _external_model(tmp_path / "m", "w.bin")
    os.link(canary.path, tmp_path / "m" / "w.bin")
    _refuse_all(path, "hard link", canary)


def test_the_audit_sees_a_plain_open_of_the_canary(tmp_path, canary):
    """The proof's own control: an open() anywhere in this process (here, by hand) is recorded."""
    path = _external_model(tmp_path / "m", "w.bin")
    os.symlink(canary.path, tmp_path / "m" / "w.bin")
    with open(tmp_path / "m" / "w.bin", "rb") as fh:  # what a careless checker would do
        fh.read(4)
    assert canary.opened == [str(tmp_path / "m" / "w.bin")]
    canary.opened.clear()


@pytest.mark.parametrize("offset,length", [(0, 64), (32, None), (12, 8), (-1, 4)])
def test_offset_length_past_end_refused(tmp_path, offset, length):
    path = _external_model(tmp_path / "m", "w.bin", offset=offset, length=length, payload="w.bin")
    _both_refuse(path, "past the end|negative")


def test_good_external_data_loads_and_runs(tmp_path):
    path = _external_model(tmp_path / "m", "w.bin", offset=0, length=16, payload="w.bin")
    onnx_safety.check_onnx_file(path)
    m = onnx_safety.load_checked(path)
    assert m.graph.initializer[0].name == "w"
    be = ort_backend.OnnxRuntimeBackend(path)
    (y,) = be.invoke([np.ones(4, np.float32)])
    np.testing.assert_allclose(y, np.arange(4) + 1)


def test_missing_external_file_is_format_error(tmp_path):
    path = _external_model(tmp_path / "m", "nothere.bin")
    with pytest.raises(ModelFormatError, match="does not exist"):
        onnx_safety.check_onnx_file(path)
    with pytest.raises(ModelFormatError, match="does not exist"):
        onnx_policy.read_checked_model(path)


@pytest.mark.parametrize("blob", [b"", b"\x00\x01\x02garbage\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"not onnx at all"])
def test_malformed_file_is_format_error(tmp_path, blob):
    p = tmp_path / "bad.onnx"
    p.write_bytes(blob)
    with pytest.raises(ModelFormatError):
        onnx_safety.check_onnx_file(str(p))
    with pytest.raises(ModelFormatError):
        ort_backend.OnnxRuntimeBackend(str(p))


def test_truncated_model_is_format_error(tmp_path):
    from test_onnx_common import conv_net

    good = tmp_path / "good.onnx"
    conv_net(good)
    data = good.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError):
        ort_backend.OnnxRuntimeBackend(str(bad))
    with pytest.raises(ModelFormatError):
        onnx_safety.check_onnx_file(str(bad))


def test_wire_scan_matches_onnx_walk(tmp_path):
    """The runtime's protobuf-free scan finds the same references as the onnx walk."""
    for where in ("initializer", "attribute", "subgraph"):
        path = _external_model(tmp_path / where, "w.bin", offset=0, length=16, payload="w.bin")
        with open(path, "rb") as fh:
            wire = onnx_policy.scan_model_bytes(fh.read()).refs
        walk = onnx_safety.external_data_refs(onnx.load(path, load_external_data=False))
        assert [(r["tensor"], r["location"], r["offset"], r["length"]) for r in wire] == \
               [(r["tensor"], r["location"], r["offset"], r["length"]) for r in walk]


def test_checker_in_subprocess(tmp_path):
    from test_onnx_common import conv_net

    good = tmp_path / "good.onnx"
    conv_net(good)
    onnx_safety.check_in_subprocess(str(good))
    # a graph that parses but fails the checker (node input never defined)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    g = helper.make_graph([helper.make_node("Add", ["x", "undefined"], ["y"])], "bad", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(m.SerializeToString())
    with pytest.raises(ModelFormatError, match="checker"):
        onnx_safety.check_in_subprocess(str(bad))
