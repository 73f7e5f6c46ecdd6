"""Targets in the converter and the Edge TPU compile step.

The compiler logs below are written down in the format ``edgetpu_compiler``
prints (https://coral.ai/docs/edgetpu/compiler/: the summary on stdout and the
"Operator / Count / Status" table of ``--show_operations`` and ``*_edgetpu.log``).
The command edgeship runs is checked against the compiler's documented options
(``DOCUMENTED_FLAGS``, from the Coral page's "Usage" table, compiler v16), not
against the stand-in. The compile step is exercised with a stand-in
``edgetpu_compiler`` on PATH that parses its arguments with that same documented
table (an unknown flag or a missing value fails like the real compiler), exits
like it and writes the same files (``<stem>_edgetpu.tflite`` and
``<stem>_edgetpu.log``, in the format of the logs above); it lists the real ops
of the model it is given (read with LiteRT) in its log.
"""

from __future__ import annotations

import json
import os
import stat
import sys

import numpy as np
import pytest

from edgeship.converters.targets.edgetpu import EdgeTPUCompileError, compile_command, compile_model, parse_log
from edgeship.errors import InputError

LOG_ALL_MAPPED = """Edge TPU Compiler version 16.0.384591198
Input: mobilenet_v2_1.0_224_quant.tflite
Output: mobilenet_v2_1.0_224_quant_edgetpu.tflite

Operator                       Count      Status

ADD                            10         Mapped to Edge TPU
AVERAGE_POOL_2D                1          Mapped to Edge TPU
CONV_2D                        36         Mapped to Edge TPU
DEPTHWISE_CONV_2D              17         Mapped to Edge TPU
QUANTIZE                       1          Mapped to Edge TPU
RESHAPE                        1          Mapped to Edge TPU
SOFTMAX                        1          Mapped to Edge TPU
"""

STDOUT_PARTIAL = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1158 ms.

Input model: detector.tflite
Input size: 4.11MiB
Output model: detector_edgetpu.tflite
Output size: 4.49MiB
On-chip memory used for caching model parameters: 3.88MiB
On-chip memory remaining for caching model parameters: 3.87MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 66
Operation log: detector_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 64
Number of operations that will run on CPU: 2

Operator                       Count      Status

CONV_2D                        55         Mapped to Edge TPU
CUSTOM                         1          Operation is working on an unsupported data type
DEPTHWISE_CONV_2D              6          Mapped to Edge TPU
DEQUANTIZE                     1          Operation is working on an unsupported data type
LOGISTIC                       1          Mapped to Edge TPU
RESHAPE                        2          Mapped to Edge TPU
"""

LOG_TWO_SEGMENTS = """Edge TPU Compiler version 15.0.340273435
Input: seg.tflite
Output: seg_edgetpu.tflite

Operator                       Count      Status

CONV_2D                        20         Mapped to Edge TPU
RESIZE_BILINEAR                1          Operation is otherwise supported, but not mapped due to some unspecified limitation
CONV_2D                        4          More than one subgraph is not supported
ARG_MAX                        1          Operation not supported
"""


def test_parse_log_all_mapped():
    r = parse_log(LOG_ALL_MAPPED)
    assert r["version"] == "16.0.384591198"
    assert r["ops_total"] == 67 and r["ops_edgetpu"] == 67 and r["ops_cpu"] == 0
    assert [o["op"] for o in r["operators"]][:2] == ["ADD", "AVERAGE_POOL_2D"]
    assert all(o["mapped"] for o in r["operators"])
    assert r["subgraphs"] is None  # not in the log file, only on stdout


def test_parse_stdout_with_partial_mapping():
    r = parse_log(STDOUT_PARTIAL)
    assert (r["ops_total"], r["ops_edgetpu"], r["ops_cpu"], r["subgraphs"]) == (66, 64, 2, 1)
    cpu = {o["op"]: o["status"] for o in r["operators"] if not o["mapped"]}
    assert cpu == {"CUSTOM": "Operation is working on an unsupported data type",
                   "DEQUANTIZE": "Operation is working on an unsupported data type"}
    assert sum(o["count"] for o in r["operators"]) == 66


def test_parse_log_ops_after_the_first_cpu_op():
    r = parse_log(LOG_TWO_SEGMENTS)
    assert (r["ops_total"], r["ops_edgetpu"], r["ops_cpu"]) == (26, 20, 6)
    assert r["version"] == "15.0.340273435"


# edgetpu_compiler's options as documented (https://coral.ai/docs/edgetpu/compiler/#usage, v16):
# long name -> (short name, takes a value). The only source of truth for the flags in these tests.
DOCUMENTED_FLAGS = {
    "--enable_multiple_subgraphs": ("-a", False),
    "--search_delegate": ("-d", False),
    "--delegate_search_step": ("-k", True),
    "--help": ("-h", False),
    "--intermediate_tensors": ("-i", True),
    "--min_runtime_version": ("-m", True),
    "--num_segments": ("-n", True),
    "--out_dir": ("-o", True),
    "--show_operations": ("-s", False),
    "--timeout_sec": ("-t", True),
    "--version": ("-v", False),
}


def parse_documented(argv, flags=DOCUMENTED_FLAGS):
    """``edgetpu_compiler [options] model...`` -> ({long flag: value or True}, [models]); ValueError if not."""
    short = {s: name for name, (s, _) in flags.items()}
    got, models, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):
            name, _, inline = a.partition("=")
            name = short.get(name, name)
            if name not in flags:
                raise ValueError(f"unknown flag {a}")
            if flags[name][1]:
                if inline:
                    got[name] = inline
                elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                    got[name] = argv[i + 1]
                    i += 1
                else:
                    raise ValueError(f"{a} needs a value")
            else:
                got[name] = True
        else:
            models.append(a)
        i += 1
    return got, models


@pytest.mark.parametrize("min_runtime", [None, 13])
def test_compile_command_uses_the_documented_flags(min_runtime):
    cmd = compile_command("model.int8.tflite", "out dir", min_runtime=min_runtime)
    assert cmd[0] == "edgetpu_compiler"
    flags, models = parse_documented(cmd[1:])
    assert models == ["model.int8.tflite"]  # one model, last
    assert flags["--out_dir"] == "out dir"
    assert flags["--show_operations"] is True  # the operations table parse_log reads
    assert flags.get("--min_runtime_version") == (None if min_runtime is None else "13")
    with pytest.raises(ValueError, match="unknown flag"):  # the checker itself can fail
        parse_documented(["--show_ops", "m.tflite"])


STAND_IN = r'''#!{python}
"""Stand-in for edgetpu_compiler: the documented options, exit codes and files."""
import os, shutil, sys
FLAGS = {flags!r}
args = sys.argv[1:]
short = {{s: name for name, (s, _) in FLAGS.items()}}
got, models, i = {{}}, [], 0
while i < len(args):
    a = args[i]
    if a.startswith("-"):
        name = short.get(a, a)
        if name not in FLAGS:
            print(f"ERROR: Unknown command line flag '{{a}}'", file=sys.stderr); sys.exit(1)
        if FLAGS[name][1]:
            if i + 1 >= len(args):
                print(f"ERROR: flag '{{a}}' is missing its argument", file=sys.stderr); sys.exit(1)
            got[name] = args[i + 1]; i += 2; continue
        got[name] = True; i += 1; continue
    models.append(a); i += 1
out_dir, show = got.get("--out_dir", "."), bool(got.get("--show_operations"))
print("Edge TPU Compiler version 16.0.384591198")
if len(models) != 1 or not os.path.isfile(models[0]):
    print("ERROR: could not open input model", file=sys.stderr); sys.exit(1)
if os.environ.get("STANDIN_FAIL"):
    print("ERROR: Didn't find op for builtin opcode 'CONV_2D' version '6'", file=sys.stderr)
    print("Internal compiler error. Aborting!", file=sys.stderr); sys.exit(1)
from ai_edge_litert.interpreter import Interpreter
ops = [d["op_name"] for d in Interpreter(models[0])._get_ops_details()]
stem = os.path.splitext(os.path.basename(models[0]))[0]
counts = {{}}
for o in ops:
    counts[o] = counts.get(o, 0) + 1
cpu_ops = {{"SOFTMAX"}}  # pretend SOFTMAX stays on the CPU
n_cpu = sum(c for o, c in counts.items() if o in cpu_ops)
table = "\nOperator                       Count      Status\n\n" + "".join(
    f"{{o:<30}} {{c:<10}} {{'Operation is otherwise supported, but not mapped due to some unspecified limitation' if o in cpu_ops else 'Mapped to Edge TPU'}}\n"
    for o, c in sorted(counts.items()))
shutil.copyfile(models[0], os.path.join(out_dir, stem + "_edgetpu.tflite"))
with open(os.path.join(out_dir, stem + "_edgetpu.log"), "w") as fh:
    fh.write(f"Edge TPU Compiler version 16.0.384591198\nInput: {{models[0]}}\nOutput: {{stem}}_edgetpu.tflite\n" + table)
print(f"\nModel compiled successfully in 12 ms.\n\nInput model: {{models[0]}}\nNumber of Edge TPU subgraphs: 1\n"
      f"Total number of operations: {{len(ops)}}\nOperation log: {{stem}}_edgetpu.log\n")
if n_cpu:
    print(f"Number of operations that will run on Edge TPU: {{len(ops) - n_cpu}}\n"
          f"Number of operations that will run on CPU: {{n_cpu}}\n")
if show:
    print(table)
'''


@pytest.fixture()
def stand_in(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "edgetpu_compiler"
    exe.write_text(STAND_IN.format(python=sys.executable, flags=DOCUMENTED_FLAGS))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return str(exe)


@pytest.fixture(scope="module")
def small_model():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, activation="relu", padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    rng = np.random.default_rng(0)
    calib = rng.random((64, 8, 8, 1), dtype=np.float32)
    return m, calib


def test_compile_model_with_stand_in(stand_in, tmp_path):
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    src = tmp_path / "in.tflite"
    import shutil  # noqa: PLC0415

    # any real .tflite will do: build one from the runtime fixtures' tiny model if TF is around
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def f(x):
        return tf.nn.softmax(x * 2.0 + 1.0)

    src.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert())
    n_ops = len(Interpreter(str(src))._get_ops_details())
    out = tmp_path / "out"
    res = compile_model(str(src), str(out))
    assert res.compiled and os.path.basename(res.output) == "model_edgetpu.tflite" and os.path.isfile(res.output)
    assert res.command[0] == stand_in and res.command[-1] == str(src) and "--out_dir" in res.command
    assert res.ops_total == n_ops and res.ops_cpu == 1 and res.ops_edgetpu == n_ops - 1 and res.subgraphs == 1
    assert not os.path.exists(out / "in_edgetpu.log")  # parsed into the result
    shutil.rmtree(out)


def test_compile_failure_shows_stderr(stand_in, tmp_path, monkeypatch):
    src = tmp_path / "m.tflite"
    src.write_bytes(b"TFL3 not really")
    monkeypatch.setenv("STANDIN_FAIL", "1")
    with pytest.raises(EdgeTPUCompileError, match=r"exit status 1(.|\n)*Didn't find op for builtin opcode"):
        compile_model(str(src), str(tmp_path / "o"))


def test_without_compiler_gives_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    res = compile_model(str(tmp_path / "model.int8.tflite"), str(tmp_path))
    assert not res.compiled and list(res.command) == compile_command("model.int8.tflite", ".")
    assert "edgetpu_compiler --show_operations --out_dir . model.int8.tflite" in res.notes[0]


def test_convert_edgetpu_with_stand_in_compiler(stand_in, small_model, tmp_path):
    from edgeship.converters import convert  # noqa: PLC0415

    model, calib = small_model
    res = convert(model, tmp_path / "b", calib=calib, io="uint8", target=["cpu", "edgetpu"])
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    files = {a["file"]: a for a in m["artifacts"]}
    assert set(files) == {"model.int8.tflite", "model_edgetpu.tflite"}
    assert files["model.int8.tflite"]["targets"] == ["cpu"] and files["model_edgetpu.tflite"]["targets"] == ["edgetpu"]
    assert files["model_edgetpu.tflite"]["io"] == "uint8" and files["model_edgetpu.tflite"]["precision"] == "int8"
    rec = files["model_edgetpu.tflite"]["edgetpu"]
    # the figures match the log the compiler wrote for this very model
    from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415

    ops = [d["op_name"] for d in Interpreter(str(tmp_path / "b" / "model.int8.tflite"))._get_ops_details()]
    assert rec["compiled"] and rec["ops_total"] == len(ops)
    assert rec["ops_cpu"] == ops.count("SOFTMAX") == 1 and rec["ops_edgetpu"] == len(ops) - 1
    assert sum(o["count"] for o in rec["operators"]) == len(ops) and rec["subgraphs"] == 1
    assert m["settings"]["edgetpu"]["ops_edgetpu"] == rec["ops_edgetpu"]
    assert os.path.isfile(tmp_path / "b" / "model_edgetpu.tflite")
    assert any("stay on the CPU" in w for w in res.warnings)
    # the runtime on this (CPU) machine picks the CPU artifact, not the Edge TPU one
    import edgeship.runtime as rt  # noqa: PLC0415

    with rt.load(tmp_path / "b") as loaded:
        assert loaded.artifact["file"] == "model.int8.tflite"


def test_convert_edgetpu_without_compiler_prints_command(small_model, tmp_path, monkeypatch):
    from edgeship.converters import convert  # noqa: PLC0415

    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                                if not os.path.exists(os.path.join(p, "edgetpu_compiler"))))
    model, calib = small_model
    res = convert(model, tmp_path / "b", calib=calib, target="edgetpu")
    m = res.manifest
    assert [a["file"] for a in m["artifacts"]] == ["model.int8.tflite"]
    assert m["artifacts"][0]["targets"] == ["edgetpu"] and m["artifacts"][0]["io"] == "int8"
    assert m["settings"]["edgetpu"]["compiled"] is False
    assert m["settings"]["edgetpu"]["command"] == ["edgetpu_compiler", "--show_operations", "--out_dir", ".",
                                                   "model.int8.tflite"]
    assert any("edgetpu_compiler --show_operations --out_dir . model.int8.tflite" in w for w in res.warnings)


def test_convert_compiler_failure_writes_nothing(stand_in, small_model, tmp_path, monkeypatch):
    from edgeship.converters import convert  # noqa: PLC0415

    monkeypatch.setenv("STANDIN_FAIL", "1")
    model, calib = small_model
    with pytest.raises(EdgeTPUCompileError, match="Internal compiler error"):
        convert(model, tmp_path / "b", calib=calib, target="edgetpu")
    assert not os.path.exists(tmp_path / "b")


@pytest.mark.parametrize("kw,match", [
    (dict(target="edgetpu", precision="fp16"), "precision='int8'"),
    (dict(target="edgetpu", io="float"), "io='int8' or io='uint8'"),
    (dict(target="edgetpu", formats=("onnx",)), "needs the tflite format"),
    (dict(target="jetson", formats=("tflite",)), "needs the onnx format"),
])
def test_target_refusals(kw, match, tmp_path):
    from edgeship.converters import convert  # noqa: PLC0415

    with pytest.raises(InputError, match=match):
        convert("does-not-matter.keras", tmp_path / "b", **kw)


def test_target_defaults():
    from edgeship.converters.targets import parse_targets as _parse_targets  # noqa: PLC0415

    assert _parse_targets("gpu", None, "int8", None)[1:] == ("fp16", "int8", ("tflite",))
    assert _parse_targets("jetson", None, "int8", None)[1:] == ("int8", "int8", ("onnx",))
    assert _parse_targets("cpu,jetson", None, "int8", None)[0] == ("cpu", "jetson")
    assert _parse_targets(["cpu", "jetson"], None, "int8", None)[3] == ("tflite", "onnx")
    assert _parse_targets("cpu", None, "int8", None)[1:] == ("int8", "int8", ("tflite",))
    assert _parse_targets(["edgetpu", "gpu"], None, "uint8", None)[1] == "int8"  # the Edge TPU forces INT8
