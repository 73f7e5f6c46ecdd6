"""Checks an ``.onnx`` file before anything loads its weights.

ONNX tensors may keep their bytes in "external data" files named by a path
inside the model. The ``onnx`` package has had several path-traversal CVEs in
exactly this place, so edgeship checks every reference itself, *before*
``onnx.load`` (with external data) or an ONNX Runtime session touches it:

* parse with ``onnx.load(path, load_external_data=False)`` (reads only the
  ``.onnx`` file itself);
* walk every tensor that can carry external data: graph initializers, sparse
  initializers, tensors and sparse tensors in node attributes, subgraphs
  (If/Loop/Scan bodies) at any depth, function bodies and training graphs;
* apply one policy (:func:`edgeship.onnx_policy.check_external_location`,
  shared with the runtime, which does the same walk without ``onnx``): no
  absolute paths, no ``..``, no symlink in the file or any parent below the
  model folder, no hard links, a regular file inside the folder after
  ``realpath``, offset/length inside the file. Only ``lstat`` is used; no
  referenced file is opened.

Parsing untrusted protobuf in-process is considered acceptable (the protobuf
parser is memory safe for malformed input); :func:`check_in_subprocess` runs
``onnx.checker`` in a child process so that a crash inside the native checker
becomes a :class:`~edgeship.errors.ModelFormatError` instead of killing the CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys

from edgeship.errors import ModelFormatError, UnsafeModelError, require
from edgeship.onnx_policy import check_external_location, external_ref

__all__ = ["check_onnx_file", "check_in_subprocess", "external_data_refs", "load_checked"]


def _onnx():
    return require("onnx", "convert", "to read ONNX models")


def _tensor_ref(onnx, t):
    entries: dict = {}
    for e in t.external_data:
        if e.key in entries:
            raise UnsafeModelError(f"tensor {t.name!r} repeats external_data key {e.key!r}")
        entries[e.key] = e.value
    external = t.data_location == onnx.TensorProto.EXTERNAL
    if not external and not entries:
        return None
    return external_ref(t.name, entries, external)


def _walk_graph(onnx, g, out: list, depth: int) -> None:
    if depth > 64:
        raise ModelFormatError("model nests subgraphs more than 64 deep")
    for t in g.initializer:
        out.append(t)
    for st in g.sparse_initializer:
        out.extend((st.values, st.indices))
    for node in g.node:
        _walk_attrs(onnx, node.attribute, out, depth)


def _walk_attrs(onnx, attrs, out: list, depth: int) -> None:
    for a in attrs:
        if a.HasField("t"):
            out.append(a.t)
        out.extend(a.tensors)
        if a.HasField("sparse_tensor"):
            out.extend((a.sparse_tensor.values, a.sparse_tensor.indices))
        for st in a.sparse_tensors:
            out.extend((st.values, st.indices))
        if a.HasField("g"):
            _walk_graph(onnx, a.g, out, depth + 1)
        for sub in a.graphs:
            _walk_graph(onnx, sub, out, depth + 1)


def external_data_refs(model) -> list:
    """Every external-data reference in ``model`` (a ModelProto), as :class:`~edgeship.onnx_policy.ExternalRef`."""
    onnx = _onnx()
    tensors: list = []
    _walk_graph(onnx, model.graph, tensors, 1)
    for ti in model.training_info:
        _walk_graph(onnx, ti.initialization, tensors, 2)
        _walk_graph(onnx, ti.algorithm, tensors, 2)
    for fn in model.functions:
        _walk_attrs(onnx, fn.attribute_proto, tensors, 2)
        for node in fn.node:
            _walk_attrs(onnx, node.attribute, tensors, 2)
    refs = []
    for t in tensors:
        r = _tensor_ref(onnx, t)
        if r is not None:
            refs.append(r)
    return refs


def check_onnx_file(path: str):
    """Parse ``path`` without its external data and check every reference.

    Returns the parsed ModelProto (external tensors not loaded).

    Raises:
        ModelFormatError: not a readable, well-formed ONNX model; a referenced
            external data file does not exist.
        UnsafeModelError: an external-data reference is absolute, contains
            ``..``, goes through a symlink, is a hard link, resolves outside the
            model folder, or has offset/length past the end of the file. The
            message names the tensor and the location.
    """
    onnx = _onnx()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFormatError(f"{path} is not a file")
    if os.path.getsize(path) == 0:
        raise ModelFormatError(f"{path} is empty, not an ONNX model")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # DecodeError, ValueError, ... from protobuf
        raise ModelFormatError(f"{path} is not a valid ONNX model ({type(exc).__name__}: {exc})") from None
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelFormatError(f"{path} is not an ONNX model: it has no graph")
    model_dir = os.path.dirname(os.path.abspath(path))
    for r in external_data_refs(model):
        check_external_location(model_dir, r["tensor"], r["location"], r["offset"], r["length"])
    return model


def load_checked(path: str):
    """``check_onnx_file`` then ``onnx.load`` with external data (ModelProto)."""
    model = check_onnx_file(path)
    if not external_data_refs(model):
        return model
    onnx = _onnx()
    try:
        return onnx.load(path)
    except Exception as exc:
        raise ModelFormatError(f"{path}: cannot load its external data ({exc})") from None


_CHILD = r"""
import sys
import onnx
path = sys.argv[1]
try:
    onnx.checker.check_model(path)
except Exception as exc:
    sys.stdout.write(type(exc).__name__ + ": " + str(exc)[:2000])
    sys.exit(3)
"""


def check_in_subprocess(path: str, *, timeout: float = 120.0) -> None:
    """Run ``onnx.checker.check_model`` on ``path`` in a child process.

    The external-data references are checked first (in this process, without
    reading them), so the child only reads files inside the model folder.

    Raises:
        UnsafeModelError: see :func:`check_onnx_file`.
        ModelFormatError: the checker rejects the model, crashes, or takes longer
            than ``timeout`` seconds.
    """
    check_onnx_file(path)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR", "TEMP", "TMP")}
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _CHILD, os.path.abspath(path)],
            capture_output=True, text=True, timeout=timeout, env=env, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ModelFormatError(f"{path}: the ONNX checker did not finish within {timeout:g} s") from exc
    if proc.returncode == 0:
        return
    if proc.returncode == 3:
        raise ModelFormatError(f"{path} fails the ONNX checker: {proc.stdout.strip()}")
    if proc.returncode < 0:
        raise ModelFormatError(f"{path}: the ONNX checker crashed (signal {-proc.returncode}); the file is malformed")
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
    raise ModelFormatError(f"{path}: the ONNX checker failed (exit {proc.returncode}): {tail[0]}")
