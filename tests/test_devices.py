"""`edgeship devices` and the CLI's accelerator options, on this machine (no mocks of the engines)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess

import pytest

from edgeship.cli.common import add_accel_arguments, describe_info, load_kwargs
from edgeship.cli.devices import add_parser as add_devices_parser
from edgeship.cli.devices import cmd_devices, format_devices
from edgeship.errors import InputError
from edgeship.runtime.discovery import cpu_features, devices

HERE = os.path.dirname(os.path.abspath(__file__))

PI5_CPUINFO = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd0b
"""

X86_CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni amx_tile amx_int8
"""


def _parser():
    p = argparse.ArgumentParser(prog="edgeship")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_devices_parser(sub)
    r = sub.add_parser("run")
    r.add_argument("path")
    add_accel_arguments(r)
    return p


def test_cpu_features_arm_and_x86():
    arm = {f["flag"]: f["present"] for f in cpu_features(PI5_CPUINFO)["features"]}
    assert arm == {"asimd": True, "asimddp": True, "i8mm": False, "sve": False}
    x86 = cpu_features(X86_CPUINFO)
    flags = {f["flag"]: f["present"] for f in x86["features"]}
    assert flags["avx2"] and flags["avx512_vnni"] and flags["amx_int8"] and not flags["avx_vnni"]
    assert "asimddp" not in flags and x86["model"] == "Some CPU"
    assert all(f["meaning"] for f in x86["features"])


def test_devices_on_this_machine():
    r = devices()
    names = {b["name"]: b for b in r["tflite"]}
    assert names["litert"]["available"] and names["litert"]["version"]
    import ai_edge_litert  # noqa: PLC0415
    import onnxruntime  # noqa: PLC0415

    assert names["litert"]["version"] == ai_edge_litert.__version__
    assert r["onnxruntime"]["version"] == onnxruntime.__version__
    assert r["onnxruntime"]["providers"] == onnxruntime.get_available_providers()
    assert "CPUExecutionProvider" in r["onnxruntime"]["providers"]
    kinds = {d["name"]: d for d in r["delegates"]}
    assert set(kinds) == {"edgetpu", "gpu"}
    for d in kinds.values():  # none installed here: each says why
        if not d["found"]:
            assert not d["usable"] and "not on the library path" in d["reason"]
    assert r["litert_compiled_model"]["available"] and "GPU" in r["litert_compiled_model"]["accelerators"]
    with open("/proc/cpuinfo") as fh:
        has_avx2 = " avx2 " in fh.read().replace("\n", " ")
    if has_avx2:
        assert {f["flag"]: f["present"] for f in r["cpu"]["features"]}["avx2"] is True


def test_delegate_libraries_found_on_the_library_path(tmp_path, monkeypatch):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no C compiler")
    # A loadable delegate under the GPU delegate's name, and a broken file under the Edge TPU's.
    subprocess.run([gcc, "-shared", "-fPIC", "-o", str(tmp_path / "libtensorflowlite_gpu_delegate.so"),
                    os.path.join(HERE, "delegate", "dummy_delegate.c")], check=True)
    (tmp_path / "libedgetpu.so.1").write_bytes(b"not a shared library")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    kinds = {d["name"]: d for d in devices()["delegates"]}
    assert kinds["gpu"]["found"] and kinds["gpu"]["usable"] and kinds["gpu"]["library"].startswith(str(tmp_path))
    assert kinds["edgetpu"]["found"] and not kinds["edgetpu"]["usable"]
    assert "load_delegate failed" in kinds["edgetpu"]["reason"]
    text = format_devices(devices(try_load=False))
    assert "found; not loaded" in text


def test_devices_command_json_and_text(capfd):
    p = _parser()
    args = p.parse_args(["devices", "--json"])
    assert cmd_devices(args) == 0
    out = capfd.readouterr().out
    obj = json.loads(out)  # exactly one JSON object on stdout
    assert set(obj) >= {"tflite", "delegates", "onnxruntime", "litert_compiled_model", "gpu", "cpu"}
    assert cmd_devices(p.parse_args(["devices"])) == 0
    text = capfd.readouterr().out
    for heading in ("TFLite interpreters", "TFLite delegates", "ONNX Runtime", "LiteRT CompiledModel", "CPU "):
        assert heading in text
    assert "litert" in text and "CPUExecutionProvider" in text


def test_delegate_flag_parsing():
    p = _parser()
    a = p.parse_args(["run", "m.tflite", "--delegate", "/x/libd.so:ops=ADD,MUL,report=/tmp/r",
                      "--delegate", "libedgetpu.so.1:device=usb:0", "--strict"])
    assert load_kwargs(a) == {"delegate": [("/x/libd.so", {"ops": "ADD,MUL", "report": "/tmp/r"}),
                                           ("libedgetpu.so.1", {"device": "usb:0"})], "strict": True}
    assert load_kwargs(p.parse_args(["run", "m.tflite"])) == {}
    with pytest.raises(InputError):
        load_kwargs(p.parse_args(["run", "m.tflite", "--delegate", ":ops=ADD"]))


def test_describe_info_line():
    from edgeship.runtime.backends import ExecutionInfo  # noqa: PLC0415

    info = ExecutionInfo(backend="litert", engine_version="2.3.0", device="delegate", delegate="libd.so",
                         ops_delegated=3, ops_total=5)
    assert describe_info(info) == "backend litert 2.3.0; delegate libd.so (3/5 ops, 60%); device delegate"
    fb = ExecutionInfo(backend="litert", fallback=True, skipped=["delegate x: failed"])
    assert describe_info(fb).endswith("[FALLBACK: delegate x: failed]")


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    tf = pytest.importorskip("tensorflow")

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def f(x):
        return tf.tanh(x * 2.0 + 1.0)

    path = tmp_path_factory.mktemp("m") / "f.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f).convert())
    return str(path)


def test_compiled_model_probe(float_model):
    from edgeship.runtime.backends.compiled_model import probe_compiled_model  # noqa: PLC0415

    cpu = probe_compiled_model(float_model, "cpu")
    assert cpu == {"accelerator": "cpu", "usable": True, "fully_accelerated": True, "reason": None}
    for acc in ("gpu", "npu"):
        r = probe_compiled_model(float_model, acc)
        if not r["usable"]:  # no GPU/NPU runtime here: it must say why, in words
            assert r["reason"] and "ERROR: [" not in r["reason"].split(";")[0]
    with pytest.raises(InputError):
        probe_compiled_model(float_model, "tpu")


def test_devices_command_with_model(float_model, capfd):
    p = _parser()
    assert cmd_devices(p.parse_args(["devices", "--json", "--model", float_model])) == 0
    obj = json.loads(capfd.readouterr().out)
    probe = {r["accelerator"]: r for r in obj["litert_compiled_model"]["probe"]}
    assert set(probe) == {"cpu", "gpu", "npu"} and probe["cpu"]["usable"]
    with pytest.raises(InputError):
        cmd_devices(p.parse_args(["devices", "--model", "/nonexistent.tflite"]))


def test_parse_targets_for_the_cli():
    from edgeship.cli.convert import parse_targets  # noqa: PLC0415

    p = argparse.ArgumentParser()
    p.add_argument("--target", type=parse_targets, default=("cpu",))
    assert p.parse_args(["--target", "cpu,edgetpu"]).target == ("cpu", "edgetpu")
    assert p.parse_args([]).target == ("cpu",)
    with pytest.raises(SystemExit):
        p.parse_args(["--target", "tpu"])
