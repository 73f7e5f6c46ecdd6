"""Mutated .tflite and .onnx files: each is opened in a child process first, so the host never crashes.

Valid tiny models are built here (a Conv/Dense TFLite model from Keras, an
ONNX MatMul/Add/Relu graph); mutants are byte flips, truncations and
structure-aware edits (TFLite through the flatbuffer object API: tensor
shapes, buffer sizes, operator tensor indices, opcode indices, subgraph
inputs; ONNX through the protobuf: dims, op types, removed inputs, initializer
sizes, data types, opsets). Every mutant goes through
:func:`edgeship.isolate.probe_model`; mutants the probe accepts are then
loaded and run *in this process*, which is the promise: after a successful
probe an in-process load does not crash. A sample of the child crashes is also
given to the CLI (``edgeship inspect``), which must exit 2, not die.
"""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from _hutil import harden_n, record

pytestmark = pytest.mark.hardening

from edgeship.errors import EdgeshipError  # noqa: E402
from edgeship.isolate import probe_model  # noqa: E402

N = harden_n(150)  # mutants per format (EDGESHIP_HARDEN_N=1000 -> 1000 each)
WORKERS = max(2, min(8, (os.cpu_count() or 2) * 2))


def _tiny_tflite(path: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import keras

    m = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(2, 3, activation="relu"),
                          keras.layers.Flatten(), keras.layers.Dense(3, activation="softmax")])
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    with open(path, "wb") as fh:
        fh.write(conv.convert())


def _tiny_onnx(path: str) -> None:
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3) / 10, "W")
    b = numpy_helper.from_array(np.ones(3, np.float32), "B")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"]),
                           helper.make_node("Relu", ["z"], ["y"])], "tiny", [x], [y], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with open(path, "wb") as fh:
        fh.write(m.SerializeToString())


# -- mutators ------------------------------------------------------------------------

_EVIL_INTS = [0, -1, 1, 2**31 - 1, -(2**31), 2**16, 65535, 3, 1 << 24]


def _byte_flips(data: bytes, rng) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] = rng.choice([b[i] ^ (1 << rng.randrange(8)), 0, 0xFF, rng.randrange(256)])
    return bytes(b)


def _truncate(data: bytes, rng) -> bytes:
    return data[: rng.randrange(1, len(data))]


def _int_overwrite(data: bytes, rng) -> bytes:
    """Overwrite an aligned 32-bit word (flatbuffer offsets, lengths and shapes are all such words)."""
    b = bytearray(data)
    i = rng.randrange(0, len(b) - 4) & ~3
    b[i:i + 4] = int(rng.choice(_EVIL_INTS) & 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(b)


def _tflite_struct(data: bytes, rng) -> bytes:
    from tensorflow.lite.tools import flatbuffer_utils as fu

    m = fu.convert_bytearray_to_object(bytearray(data))
    sg = m.subgraphs[0]
    kind = rng.choice(["shape", "shape_sig", "buffer_size", "op_input", "op_output", "opcode", "sg_input",
                       "tensor_buffer", "tensor_type", "drop_tensor", "builtin_code", "drop_buffer_data"])
    t = rng.choice(sg.tensors)
    if kind == "shape":
        if t.shape is not None and len(t.shape):
            t.shape[rng.randrange(len(t.shape))] = rng.choice(_EVIL_INTS)
        else:
            t.shape = np.array([rng.choice(_EVIL_INTS)], np.int32)
    elif kind == "shape_sig":
        t.shapeSignature = np.array([rng.choice(_EVIL_INTS) for _ in range(rng.randint(0, 6))], np.int32)
    elif kind == "buffer_size":
        bufs = [bb for bb in m.buffers if bb.data is not None and len(bb.data)]
        if bufs:
            bb = rng.choice(bufs)
            bb.data = bb.data[: rng.randrange(len(bb.data))] if rng.random() < 0.7 else np.concatenate([bb.data, bb.data])
    elif kind in ("op_input", "op_output"):
        op = rng.choice(sg.operators)
        arr = op.inputs if kind == "op_input" else op.outputs
        if arr is not None and len(arr):
            arr[rng.randrange(len(arr))] = rng.choice([-1, len(sg.tensors), len(sg.tensors) + 100, 2**31 - 1, 0])
    elif kind == "opcode":
        rng.choice(sg.operators).opcodeIndex = rng.choice([len(m.operatorCodes), 2**31 - 1, 0, 1])
    elif kind == "sg_input":
        sg.inputs = np.array([rng.choice([-1, len(sg.tensors), 0, 1])], np.int32)
    elif kind == "tensor_buffer":
        t.buffer = rng.choice([len(m.buffers), len(m.buffers) + 5, 0, 2**31 - 1])
    elif kind == "tensor_type":
        t.type = rng.choice([0, 1, 2, 3, 9, 16, 17, 100, 127])
    elif kind == "drop_tensor":
        sg.tensors = sg.tensors[:-1]
    elif kind == "builtin_code":
        oc = rng.choice(m.operatorCodes)
        oc.builtinCode = oc.deprecatedBuiltinCode = rng.choice([0, 1, 3, 9, 22, 126, 127, 200])
    else:
        for bb in m.buffers:
            bb.data = None
    return bytes(fu.convert_object_to_bytearray(m))


def _onnx_struct(data: bytes, rng) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.ParseFromString(data)
    g = m.graph
    kind = rng.choice(["dim", "op_type", "drop_input", "drop_graph_input", "init_dims", "init_type",
                       "init_raw", "rename_output", "opset", "ir", "attr", "dup_node", "cycle", "elem_type"])
    if kind == "dim":
        vi = rng.choice(list(g.input) + list(g.output))
        d = vi.type.tensor_type.shape.dim[rng.randrange(len(vi.type.tensor_type.shape.dim))]
        d.dim_value = rng.choice([0, 2**31 - 1, 2**40, 7])
    elif kind == "op_type":
        rng.choice(g.node).op_type = rng.choice(["Conv", "Foo", "", "Loop", "Reshape", "TopK", "Gather"])
    elif kind == "drop_input":
        n = rng.choice(g.node)
        if len(n.input):
            del n.input[rng.randrange(len(n.input))]
    elif kind == "drop_graph_input":
        del g.input[:]
    elif kind == "init_dims":
        t = rng.choice(g.initializer)
        t.dims[rng.randrange(len(t.dims))] = rng.choice([0, 1, 2**31 - 1, 2**40, -1])
    elif kind == "init_type":
        rng.choice(g.initializer).data_type = rng.choice([0, 2, 7, 8, 11, 16, 99])
    elif kind == "init_raw":
        t = rng.choice(g.initializer)
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)] if t.raw_data else b"\x00" * 3
    elif kind == "rename_output":
        rng.choice(g.node).output[0] = "nowhere"
    elif kind == "opset":
        m.opset_import[0].version = rng.choice([0, 1, 6, 99, 2**31 - 1])
    elif kind == "ir":
        m.ir_version = rng.choice([0, 1, 3, 99])
    elif kind == "attr":
        rng.choice(g.node).attribute.extend([helper.make_attribute("axis", rng.choice([-100, 2**31 - 1]))])
    elif kind == "dup_node":
        g.node.extend([copy.deepcopy(g.node[0])])
    elif kind == "cycle":
        g.node[0].input[0] = g.node[-1].output[0]
    else:
        g.input[0].type.tensor_type.elem_type = rng.choice([0, TensorProto.STRING, TensorProto.INT8, 99])
    return m.SerializeToString()


def _mutants(base: bytes, fmt: str, n: int, seed: int):
    rng = random.Random(seed)
    struct = _tflite_struct if fmt == "tflite" else _onnx_struct
    kinds = [("flip", _byte_flips), ("truncate", _truncate), ("word", _int_overwrite), ("struct", struct),
             ("struct", struct)]
    out = []
    while len(out) < n:
        name, fn = rng.choice(kinds)
        try:
            data = fn(base, rng)
            if rng.random() < 0.15 and name == "struct":  # edits stacked on edits
                data = _byte_flips(data, rng)
        except Exception:  # the object API itself may refuse an edit; try another
            continue
        out.append((name, data))
    return out


def _zero_run(model):
    return model.run({s.name: np.zeros(tuple(1 if d is None else d for d in s.shape), np.float32)
                      for s in model.inputs})


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_mutated_models_never_crash_the_host(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    import edgeship.runtime as rt

    base_path = str(tmp_path / f"base.{fmt}")
    (_tiny_tflite if fmt == "tflite" else _tiny_onnx)(base_path)
    probe_model(base_path)  # the unmutated model is accepted
    base = open(base_path, "rb").read()
    mutants = _mutants(base, fmt, N, seed=1234 if fmt == "tflite" else 4321)
    paths = []
    for i, (kind, data) in enumerate(mutants):
        p = str(tmp_path / f"m{i:05d}_{kind}.{fmt}")
        with open(p, "wb") as fh:
            fh.write(data)
        paths.append(p)

    def probe(p):
        t0 = time.perf_counter()
        try:
            probe_model(p, timeout=30)
            return p, "accepted", None, time.perf_counter() - t0
        except EdgeshipError as exc:
            return p, "rejected", exc, time.perf_counter() - t0
        except Exception as exc:  # an untyped error escaped: a bug, counted as such
            return p, "untyped", exc, time.perf_counter() - t0

    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(probe, paths))

    untyped = [(p, repr(e)) for p, st, e, _ in results if st == "untyped"]
    crashed = [p for p, st, e, _ in results if st == "rejected" and "crashed the interpreter" in str(e)]
    hung = [p for p, st, e, _ in results if st == "rejected" and "did not finish" in str(e)]
    accepted = [p for p, st, _, _ in results if st == "accepted"]
    rejected = [p for p, st, _, _ in results if st == "rejected"]

    # accepted mutants are now opened in this process: the promise under test
    inproc_errors = 0
    for p in accepted:
        try:
            with rt.load(p, threads=1) as m:
                _zero_run(m)
        except EdgeshipError:
            inproc_errors += 1  # typed: fine (e.g. a probe-only shape)

    # the CLI on a sample of the files that crash an engine: exit 2, one line, no signal
    cli_codes = []
    for p in crashed[:5]:
        r = subprocess.run([sys.executable, "-m", "edgeship.cli", "inspect", p], capture_output=True, timeout=120)
        cli_codes.append(r.returncode)
    kinds = {}
    for p, st, _, _ in results:
        k = os.path.basename(p).split("_", 1)[1].split(".")[0]
        kinds.setdefault(k, [0, 0])[0 if st == "rejected" else 1] += 1
    record(f"(a) malformed .{fmt}", **{
        "tried": len(results), "host crashes": 0, "rejected (typed)": len(rejected), "accepted": len(accepted),
        "child crashes contained": len(crashed),
        "slowest (s)": max(t for *_, t in results),
        "notes": (f"hangs killed {len(hung)}, untyped {len(untyped)}, typed errors on in-process reload "
                  f"{inproc_errors}; by kind rejected/accepted {kinds}; CLI inspect on child crashers exit codes "
                  f"{cli_codes or 'n/a'}")})
    assert not untyped, untyped[:5]
    assert all(c == 2 for c in cli_codes), cli_codes  # the CLI probes bare files in a child: never a signal
