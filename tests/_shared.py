"""Helpers shared by tests (imported by tests/conftest.py and by test files): no fixtures here.

``make_canary``/``Canary``: a file whose every ``open()`` in this process is recorded by an
audit hook (:func:`sys.addaudithook`, event ``open``), as any user, root included.
``build_external_data_model``: an ONNX model with external data pointing wherever asked.
``import_blocker_source``: Python source for a child process in which some imports fail.
``audit_events``: record (and optionally refuse) audit events such as ``socket.connect``.
``load_digits_xy``: sklearn digits as float32 NHWC in [0, 1].
"""

from __future__ import annotations

import contextlib
import os
import sys
import textwrap
import threading

import numpy as np

# ------------------------------------------------------------------------------ open() audit

_WATCHED: dict = {}  # (st_dev, st_ino) -> list of paths that opened it
_AUDIT_LOCK = threading.Lock()
_IN_HOOK = threading.local()


_LISTENERS: list = []  # (event name, list to append args to, exception to raise or None)


def _audit(event, args):
    if _LISTENERS:
        for name, seen, block in list(_LISTENERS):
            if event == name:
                seen.append(args)
                if block is not None:
                    raise block(f"{event} is refused in this test: {args[1:]!r}")
    if event != "open" or not _WATCHED or getattr(_IN_HOOK, "on", False):
        return
    path = args[0] if args else None
    if path is None or isinstance(path, int):
        return
    _IN_HOOK.on = True
    try:
        try:
            st = os.stat(path)
        except (OSError, TypeError, ValueError):
            return
        hits = _WATCHED.get((st.st_dev, st.st_ino))
        if hits is not None:
            with _AUDIT_LOCK:
                hits.append(os.fsdecode(path))
    finally:
        _IN_HOOK.on = False


sys.addaudithook(_audit)  # permanent for the process; does nothing while no canary is watched


class Canary:
    """A file that must never be opened; ``opened`` lists every path an ``open()`` of it used."""

    def __init__(self, path) -> None:
        self.path = path
        st = os.stat(path)
        self.key = (st.st_dev, st.st_ino)
        self.opened: list = []

    def watch(self) -> "Canary":
        _WATCHED[self.key] = self.opened
        return self

    def unwatch(self) -> None:
        _WATCHED.pop(self.key, None)


@contextlib.contextmanager
def audit_events(event: str, *, refuse: type[BaseException] | None = None):
    """Record every ``event`` audit event (e.g. ``socket.connect``) raised in this process meanwhile.

    Yields the list of the events' argument tuples; with ``refuse`` (an exception class) each
    such event is also refused (the operation raises it), whoever asked for it.
    """
    seen: list = []
    entry = (event, seen, refuse)
    _LISTENERS.append(entry)
    try:
        yield seen
    finally:
        _LISTENERS.remove(entry)


def make_canary(path) -> Canary:
    """Write a 16-byte canary at ``path`` and start watching it (call ``.unwatch()`` when done)."""
    with open(path, "wb") as fh:
        fh.write(np.arange(4, dtype=np.float32).tobytes())
    return Canary(path).watch()


# ------------------------------------------------------------------------------ data and models


def load_digits_xy():
    from sklearn.datasets import load_digits  # noqa: PLC0415

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    x.setflags(write=False)
    y = d.target.astype(np.int64)
    y.setflags(write=False)
    return x, y


# ------------------------------------------------------------------------------ builders


def build_external_data_model(model_dir, location, *, offset=None, length=None, where="initializer",
                              payload=None, shape=(4,), file="model.onnx"):
    """An ONNX ``Add(x, w)`` model in ``model_dir/file`` whose ``w`` (4 floats) lives in external data.

    ``location``/``offset``/``length`` go into ``w``'s external-data entries as given (``location``
    None: ``w`` is stored in the model as usual);
    ``where``: ``initializer``, ``attribute`` (a Constant node's tensor) or ``subgraph``
    (a Constant inside an If branch); ``payload``: a file name in ``model_dir`` to write
    the 16 bytes of ``w`` into; ``shape``: of ``x``, ``w`` and ``y``. Returns the path.
    """
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(shape), "w")
    if location is not None:  # None: an ordinary model, ``w`` stored inside it
        w.data_location = TensorProto.EXTERNAL
        del w.external_data[:]
        for k, v in (("location", location), ("offset", offset), ("length", length)):
            if v is not None:
                e = w.external_data.add()
                e.key, e.value = k, str(v)
        w.ClearField("raw_data")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))
    inits = []
    if where == "initializer":
        nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
        inits = [w]
    elif where == "attribute":
        nodes = [helper.make_node("Constant", [], ["w"], value=w), helper.make_node("Add", ["x", "w"], ["y"])]
    elif where == "subgraph":
        wo = helper.make_tensor_value_info("w", TensorProto.FLOAT, list(shape))
        then_g = helper.make_graph([helper.make_node("Constant", [], ["w"], value=w)], "then", [], [wo])
        zeros = numpy_helper.from_array(np.zeros(shape, np.float32))
        else_g = helper.make_graph([helper.make_node("Constant", [], ["w"], value=zeros)], "else", [], [wo])
        nodes = [helper.make_node("If", ["cond"], ["w"], then_branch=then_g, else_branch=else_g),
                 helper.make_node("Add", ["x", "w"], ["y"])]
        inits = [numpy_helper.from_array(np.array(True), "cond")]
    else:
        raise ValueError(where)
    graph = helper.make_graph(nodes, "ext", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, file)
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())
    if payload is not None:
        with open(os.path.join(model_dir, payload), "wb") as fh:
            fh.write(np.arange(4, dtype=np.float32).tobytes())
    return path


def import_blocker_source(blocked) -> str:
    """Python source that makes any import of a package in ``blocked`` (top-level names) fail.

    Prepend it to a child's code; it also defines ``blocked_loaded()``: the blocked modules
    that are in ``sys.modules`` anyway (should be ``[]``).
    """
    return textwrap.dedent(f"""
        import sys as _sys
        _BLOCKED = {sorted(set(blocked))!r}
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in _BLOCKED:
                    raise ImportError(name + " is blocked in this test")
                return None
        _sys.meta_path.insert(0, _Block())
        def blocked_loaded():
            return sorted(m for m in _sys.modules if m.split(".")[0] in _BLOCKED)
    """)


def write_demo_scenes(folder: str, mod, n: int, seed: int) -> str:
    """``n`` labelled shape scenes of the demo detector (``mod`` = :mod:`edgeship.demos.detector`):
    ``folder/images/sNNNN.png`` and YOLO txt labels (class cx cy w h, normalised) in ``folder/labels/``.
    Returns the images folder."""
    import cv2  # noqa: PLC0415

    s = mod.DetectorSettings()
    img_dir, lab_dir = os.path.join(folder, "images"), os.path.join(folder, "labels")
    os.makedirs(img_dir)
    os.makedirs(lab_dir)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, boxes, ids = mod.render_scene(rng, s.scene_size, s.max_objects)
        cv2.imwrite(os.path.join(img_dir, f"s{i:04d}.png"), img)
        with open(os.path.join(lab_dir, f"s{i:04d}.txt"), "w") as fh:
            for b, c in zip(boxes, ids):
                fh.write(f"{c} {(b[0] + b[2]) / 2} {(b[1] + b[3]) / 2} {b[2] - b[0]} {b[3] - b[1]}\n")
    return img_dir
