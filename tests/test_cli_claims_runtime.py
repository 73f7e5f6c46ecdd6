"""README claims about running bundles: ``run``/``bench``/``eval``/``devices`` flags, the backends,
ONNX Runtime's provider order, the TensorRT engine cache, integrity and exit codes.

One bundle (INT8 TFLite + INT8 ONNX of the session digits CNN) is converted once for the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from test_cli_claims_common import artifact, cli, cli_capture, cli_json, manifest, one_error_line, write_data

pytestmark = pytest.mark.slow

# The README's order: "providers in order TensorRT, CUDA, OpenVINO, CoreML, NNAPI, QNN, CPU"
README_PROVIDER_ORDER = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "OpenVINOExecutionProvider",
                         "CoreMLExecutionProvider", "NnapiExecutionProvider", "QNNExecutionProvider",
                         "CPUExecutionProvider"]
LABELS = [f"digit{i}" for i in range(10)]


@pytest.fixture(scope="module")
def work(tmp_path_factory, digits, digits_cnn_file):
    root = str(tmp_path_factory.mktemp("claims-rt"))
    x, y = digits
    files = write_data(root, x, y)
    bundle = os.path.join(root, "bundle")
    assert cli("convert", digits_cnn_file, "-o", bundle, "--calib", files["calib"], "--eval", files["test"],
               "--formats", "tflite,onnx", "--labels", ",".join(LABELS)) == 0
    return {"root": root, "bundle": bundle, "model": digits_cnn_file, "x": x, "y": y, **files}


def _ids(res):
    return [r["classes"][0]["id"] for r in res["results"]]


# ------------------------------------------------------------------------------- run


def test_run_artifact_picks_the_engine(work, capfd):
    tfl = cli_json(capfd, "run", work["bundle"], work["batch"], "--artifact", "tflite")
    onx = cli_json(capfd, "run", work["bundle"], work["batch"], "--artifact", "onnx")
    by_name = cli_json(capfd, "run", work["bundle"], work["batch"], "--artifact", "model.int8.onnx")
    assert tfl["backend"]["backend"] == "litert"
    assert onx["backend"]["backend"] == "onnxruntime" and by_name["backend"]["backend"] == "onnxruntime"
    assert len(tfl["results"]) == len(onx["results"]) == 4
    assert _ids(tfl) == _ids(onx) == _ids(by_name)
    assert [r["classes"][0]["label"] for r in tfl["results"]] == [LABELS[i] for i in _ids(tfl)]
    rc, _, err = cli_capture(capfd, "run", work["bundle"], work["batch"], "--artifact", "fp16")
    assert rc == 2
    assert "fp16" in one_error_line(err)


@pytest.mark.parametrize("artifact_name", ["tflite", "onnx"])
def test_run_threads_reaches_the_engine(work, capfd, artifact_name):
    for n in (1, 2):
        res = cli_json(capfd, "run", work["bundle"], work["batch"], "--artifact", artifact_name, "--threads", n)
        assert res["backend"]["threads"] == n
    rc, _, err = cli_capture(capfd, "run", work["bundle"], work["batch"], "--threads", "0")
    assert rc == 2
    assert "threads" in one_error_line(err)


def test_run_device_cpu_and_an_absent_edgetpu(work, capfd):
    cpu = cli_json(capfd, "run", work["bundle"], work["batch"], "--device", "cpu")
    assert cpu["backend"]["device"] == "cpu" and not cpu["backend"]["fallback"]
    # no Edge TPU here: without --strict one fallback, recorded, and the CPU result
    tpu = cli_json(capfd, "run", work["bundle"], work["batch"], "--device", "edgetpu:usb:0")
    assert tpu["backend"]["fallback"] is True
    assert any("edgetpu" in s.lower() for s in tpu["backend"]["skipped"]), tpu["backend"]["skipped"]
    assert _ids(tpu) == _ids(cpu)
    # with --strict it is an error (exit 2, one line that says what is missing)
    rc, out, err = cli_capture(capfd, "run", work["bundle"], work["batch"], "--device", "edgetpu:usb:0", "--strict")
    assert rc == 2
    assert "edgetpu" in one_error_line(err).lower()


def test_onnx_runtime_providers_in_the_readme_order(work, capfd):
    import onnxruntime as ort

    available = ort.get_available_providers()
    res = cli_json(capfd, "run", work["bundle"], work["batch"], "--artifact", "onnx")
    info = res["backend"]
    assert info["providers"] == [p for p in README_PROVIDER_ORDER if p in available]  # here: CPU only
    tried = [s.split(":", 1)[0] for s in info["skipped"]]
    # every provider this build lacks is tried and skipped, best first, in the README's order
    assert tried == [p for p in README_PROVIDER_ORDER[:-1] if p not in available], info["skipped"]
    assert info["fallback"] is False  # nothing was asked for: CPU is the plan, not a fallback


def test_run_device_tensorrt_falls_back_or_refuses(work, capfd):
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT is available here")
    res = cli_json(capfd, "run", work["bundle"], work["batch"], "--artifact", "onnx", "--device", "tensorrt")
    assert res["backend"]["fallback"] is True and res["backend"]["providers"] == ["CPUExecutionProvider"]
    assert [s.split(":", 1)[0] for s in res["backend"]["skipped"]][:1] == ["TensorrtExecutionProvider"]
    rc, _, err = cli_capture(capfd, "run", work["bundle"], work["batch"], "--artifact", "onnx", "--device",
                             "tensorrt", "--strict")
    assert rc == 2
    assert "TensorrtExecutionProvider" in one_error_line(err)


def test_tensorrt_engine_cache_dir_and_edgeship_cache(monkeypatch, tmp_path):
    """`~/.cache/edgeship/tensorrt/<model hash>`, moved by EDGESHIP_CACHE (the options given to ONNX Runtime)."""
    from edgeship.runtime.backends import onnxruntime as ortb

    sha = "ab" * 32
    monkeypatch.delenv("EDGESHIP_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = ortb.trt_cache_dir(sha)
    assert default == os.path.join(str(tmp_path / "home"), ".cache", "edgeship", "tensorrt", sha[:32])
    monkeypatch.setenv("EDGESHIP_CACHE", str(tmp_path / "cache"))
    moved = ortb.trt_cache_dir(sha)
    assert moved == os.path.join(str(tmp_path / "cache"), "tensorrt", sha[:32])
    options = ortb.OrtOptions() if hasattr(ortb, "OrtOptions") else {}  # the backend's options, defaults
    opts = ortb.provider_options(ortb.TENSORRT, model_sha256=sha, qdq=True, options=options)
    assert opts["trt_engine_cache_enable"] == "True"
    assert opts["trt_engine_cache_path"] == moved and os.path.isdir(moved)  # created, where ORT will write
    assert opts["trt_int8_enable"] == "True"  # a QDQ model runs in INT8
    assert not os.path.exists(default)


# ------------------------------------------------------------------------------- the tensorflow.lite backend


def test_tensorflow_lite_backend_runs_the_model(work):
    """The last TFLite engine of the README's list runs the bundle and gives LiteRT's results."""
    from edgeship import runtime

    x = np.load(work["test_x"])[:64]
    outs = {}
    for name in ("litert", "tensorflow.lite"):
        with runtime.load(work["bundle"], backend=name, strict=True) as m:
            assert m.info.backend == name and not m.info.fallback
            outs[name] = next(iter(m.run(x).values()))
    assert outs["litert"].shape == (64, 10)
    step = 1 / 256  # one step of the INT8 softmax output
    assert np.abs(outs["litert"] - outs["tensorflow.lite"]).max() <= step + 1e-6
    assert (outs["litert"].argmax(1) == outs["tensorflow.lite"].argmax(1)).mean() >= 0.98


# ------------------------------------------------------------------------------- bench


def test_bench_threads_batch_backend(work, capfd):
    res = cli_json(capfd, "bench", work["bundle"], "--runs", "3", "--warmup", "1", "--threads", "1", "--batch", "2",
                   "--backend", "tensorflow.lite")
    assert res["backend"]["backend"] == "tensorflow.lite"
    assert res["threads"] == 1 and res["backend"]["threads"] == 1
    assert res["batch"] == 2 and res["runs"] == 3
    onx = cli_json(capfd, "bench", work["bundle"], "--runs", "3", "--warmup", "0", "--threads", "2", "--artifact",
                   "onnx", "--backend", "onnxruntime")
    assert onx["backend"]["backend"] == "onnxruntime" and onx["backend"]["threads"] == 2
    rc, _, err = cli_capture(capfd, "bench", work["bundle"], "--runs", "3", "--backend", "no_such_engine")
    assert rc == 2
    assert "no_such_engine" in one_error_line(err)


# ------------------------------------------------------------------------------- eval


def test_eval_against_and_count(work, capfd):
    src = cli_json(capfd, "eval", work["bundle"], "--data", work["test"], "--against", "source", "--count", "50")
    assert src["count"] == 50
    assert src["reference"] != "labels"
    tfl = src["artifacts"]["model.int8.tflite"]
    assert tfl["top1_agreement"] >= 0.95 and tfl["accuracy"] is not None
    lab = cli_json(capfd, "eval", work["bundle"], "--data", work["test"], "--against", "labels", "--count", "60")
    assert lab["count"] == 60 and lab["reference"] == "labels"
    assert set(lab["artifacts"]) == {"model.int8.tflite", "model.int8.onnx"}
    for m in lab["artifacts"].values():
        assert "top1_agreement" not in m and 0.7 <= m["accuracy"] <= 1.0
    # the accuracy is the artifact's against the labels: recompute it from `run`
    y = np.load(work["test"])["y"]
    full = cli_json(capfd, "eval", work["bundle"], "--data", work["test"], "--against", "labels")
    assert full["count"] == len(y)
    ids = _ids(cli_json(capfd, "run", work["bundle"], work["test_x"], "--top-k", "1"))
    assert full["artifacts"]["model.int8.tflite"]["accuracy"] == pytest.approx(np.mean(np.array(ids) == y))
    rc, _, err = cli_capture(capfd, "eval", work["bundle"], "--data", work["test_x"], "--against", "labels")
    assert rc == 2
    assert "label" in one_error_line(err)


# ------------------------------------------------------------------------------- devices --no-load


def test_devices_no_load_finds_but_does_not_load(tmp_path, monkeypatch, capfd):
    """A delegate library on the library path (the tests' C delegate installed as libedgetpu.so.1)."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler to build the test delegate")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "delegate", "dummy_delegate.c")
    lib = tmp_path / "libedgetpu.so.1"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(lib), src], check=True, capture_output=True)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))

    def mapped():
        with open("/proc/self/maps") as fh:
            return str(lib) in fh.read()

    rep = cli_json(capfd, "devices", "--no-load")
    tpu = next(d for d in rep["delegates"] if d["name"] == "edgetpu")
    assert tpu["found"] is True and tpu["library"] == str(lib)
    assert tpu["usable"] is False and "not loaded" in tpu["reason"]
    assert not mapped()  # the library was never opened
    rep = cli_json(capfd, "devices")
    tpu = next(d for d in rep["delegates"] if d["name"] == "edgetpu")
    assert tpu["usable"] is True or "load_delegate" in (tpu["reason"] or "")
    assert mapped()  # without --no-load it was loaded


# ------------------------------------------------------------------------------- exit code 1


def test_internal_error_exits_1_with_a_traceback(work, capfd, monkeypatch):
    """A bug (not the user's mistake) inside a command: exit 1, the traceback, and a request to report it.

    The bug is planted in the parsed arguments: ``--top-k`` becomes an object whose comparison raises
    (what a bug deep inside the command would raise), whatever module implements the command.
    """
    import argparse

    class Buggy(int):
        def __lt__(self, other):
            raise ZeroDivisionError("a bug inside edgeship")

        __gt__ = __le__ = __ge__ = __lt__

    original = argparse.ArgumentParser.parse_known_args

    def plant(self, args=None, namespace=None):
        ns, extra = original(self, args, namespace)
        if self.prog == "edgeship" and getattr(ns, "top_k", None) is not None:
            func = ns.func

            def buggy(a):
                a.top_k = Buggy(a.top_k)
                return func(a)

            ns.func = buggy
        return ns, extra

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", plant)
    rc, out, err = cli_capture(capfd, "run", work["bundle"], work["batch"])
    assert rc == 1, err[-2000:]
    assert "Traceback" in err and "ZeroDivisionError: a bug inside edgeship" in err
    assert "internal error" in err
    monkeypatch.undo()
    rc, _, _ = cli_capture(capfd, "run", work["bundle"], work["batch"])
    assert rc == 0  # the same command without the bug succeeds


# ------------------------------------------------------------------------------- integrity


def _copy(work, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(work["bundle"], dst)
    return dst


def _flip(path, at=64):
    with open(path, "r+b") as fh:
        fh.seek(at)
        b = fh.read(1)
        fh.seek(at)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_tampered_other_artifact_is_detected(work, tmp_path, capfd):
    b = _copy(work, tmp_path)
    _flip(b / "model.int8.onnx")
    rc, out, err = cli_capture(capfd, "inspect", b)
    assert rc == 2
    assert "model.int8.onnx" in one_error_line(err) and "INTEGRITY" in out
    rc, _, err = cli_capture(capfd, "run", b, work["batch"], "--artifact", "onnx")
    assert rc == 2
    assert "sha256" in one_error_line(err)
    rc, out, _ = cli_capture(capfd, "inspect", b, "--json")
    assert rc == 2 and any("model.int8.onnx" in p for p in json.loads(out)["integrity_errors"])


def test_tampered_calibration_file_is_detected(work, tmp_path, capfd):
    b = _copy(work, tmp_path)
    _flip(b / "calibration.npz", at=200)
    rc, _, _ = cli_capture(capfd, "inspect", b)
    assert rc == 2


def test_tampered_manifest_is_refused_on_load(work, tmp_path, capfd):
    b = _copy(work, tmp_path)
    man = manifest(b)
    del artifact(man, fmt="tflite")["sha256"]
    (b / "manifest.json").write_text(json.dumps(man))
    rc, _, err = cli_capture(capfd, "run", b, work["batch"])
    assert rc == 2
    assert "schema" in one_error_line(err)


def test_invalid_manifest_is_refused_on_write(tmp_path):
    """The bundle writer validates the manifest before it writes it: nothing appears at the target."""
    from edgeship.bundle import BundleWriter
    from edgeship.errors import EdgeshipError

    target = tmp_path / "out"
    with pytest.raises(EdgeshipError, match="schema"):
        with BundleWriter(str(target)) as w:
            with open(w.path("model.int8.tflite"), "wb") as fh:
                fh.write(b"x" * 16)
            w.commit({"schema_version": 1, "name": "out", "artifacts": "not a list"})
    assert not target.exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".out") and os.path.isdir(tmp_path / p)]
