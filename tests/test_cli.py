"""The CLI end to end, in subprocesses: exit codes, one-line errors, JSON on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

EDGESHIP = [sys.executable, "-m", "edgeship.cli"]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EDGESHIP_PROGRESS="0")


def cli(*args, cwd=None, timeout=600):
    return subprocess.run(EDGESHIP + [str(a) for a in args], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=timeout)


pytestmark = pytest.mark.slow  # every test here runs a CLI subprocess on a converted bundle


@pytest.fixture(scope="module")
def work(tmp_path_factory, digits, digits_cnn_file):
    """The session's digits CNN (tests/conftest.py) as a .keras file, its INT8 bundle, and data files."""
    root = tmp_path_factory.mktemp("cli")
    x, y = digits
    path = digits_cnn_file
    np.savez(root / "calib.npz", x=x[:300], y=y[:300])
    np.savez(root / "test.npz", x=x[1400:], y=y[1400:])
    np.save(root / "batch.npy", x[1400:1404])
    np.save(root / "wrong.npy", np.zeros((2, 5, 5, 1), np.float32))
    (root / "labels.txt").write_text("\n".join(f"digit{i}" for i in range(10)) + "\n")
    out = root / "bundle"
    r = cli("convert", path, "-o", out, "--calib", root / "calib.npz", "--eval", root / "test.npz",
            "--labels", root / "labels.txt", "--precision", "int8", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    return {"root": root, "model": path, "bundle": out, "convert_stdout": r.stdout, "x": x, "y": y}


def test_convert_json_is_exactly_one_object(work):
    obj = json.loads(work["convert_stdout"])  # fails if anything else was printed on stdout
    man = obj["manifest"]
    assert os.path.isdir(obj["bundle"])
    art = man["artifacts"][0]
    assert art["precision"] == "int8" and art["file"].endswith(".tflite")
    val = man["validation"]["artifacts"][art["file"]]
    assert val["accuracy"] > 0.8 and val["top1_agreement"] > 0.9


def test_convert_refuses_to_overwrite_without_force(work):
    before = open(os.path.join(work["bundle"], "manifest.json")).read()
    r = cli("convert", work["model"], "-o", work["bundle"], "--calib", work["root"] / "calib.npz")
    assert r.returncode == 2
    assert "--force" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert open(os.path.join(work["bundle"], "manifest.json")).read() == before


def test_inspect_text_and_json(work):
    r = cli("inspect", work["bundle"])
    assert r.returncode == 0, r.stderr
    assert "int8" in r.stdout and "digit0" in r.stdout
    r = cli("inspect", work["bundle"], "--json")
    obj = json.loads(r.stdout)
    assert obj["kind"] == "bundle" and obj["integrity_errors"] == []


def test_run_npy_json_gives_labels(work):
    r = cli("run", work["bundle"], work["root"] / "batch.npy", "--top-k", "3", "--json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    assert len(obj["results"]) == 4
    top = obj["results"][0]["classes"]
    assert len(top) == 3 and top[0]["label"].startswith("digit")
    # the model is good: the top class of most samples is the true digit
    hits = sum(int(res["classes"][0]["id"]) == int(t) for res, t in zip(obj["results"], work["y"][1400:1404]))
    assert hits >= 3


def test_run_shows_no_engine_start_up_line(work):
    """LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on fd 2 when it builds an
    interpreter: the CLI keeps that known line off the terminal (and only that one), and
    EDGESHIP_VERBOSE=1 shows it, so the test sees the line exists and is filtered."""
    r = cli("run", work["bundle"], work["root"] / "batch.npy")
    assert r.returncode == 0, r.stderr
    assert "XNNPACK" not in r.stderr and "INFO:" not in r.stderr, r.stderr
    loud = subprocess.run(EDGESHIP + ["run", str(work["bundle"]), str(work["root"] / "batch.npy")],
                          capture_output=True, text=True, env=dict(ENV, EDGESHIP_VERBOSE="1"), timeout=600)
    assert loud.returncode == 0, loud.stderr
    assert "Created TensorFlow Lite XNNPACK delegate" in loud.stderr
    assert loud.stdout == r.stdout


def test_run_image_file(work, tmp_path):
    import cv2

    img = (work["x"][1400, :, :, 0] * 255).astype(np.uint8)
    p = tmp_path / "digit.png"
    cv2.imwrite(str(p), img)
    r = cli("run", work["bundle"], p, "--json", "--top-k", "3")
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    # the image goes through the manifest's preprocessing to the same input as the array:
    # same top classes, same order, scores within one uint8 step of the pixels
    ref = cli("run", work["bundle"], work["root"] / "batch.npy", "--json", "--top-k", "3")
    want = json.loads(ref.stdout)["results"][0]["classes"]
    assert [c["id"] for c in res["classes"]] == [c["id"] for c in want], (res, want)
    assert res["classes"][0]["label"] == want[0]["label"] == f"digit{want[0]['id']}"
    assert abs(res["classes"][0]["score"] - want[0]["score"]) < 0.05


def test_run_wrong_shape_is_a_user_error(work):
    r = cli("run", work["bundle"], work["root"] / "wrong.npy")
    assert r.returncode == 2, r.stderr
    assert "shape" in r.stderr and "Traceback" not in r.stderr


def test_corrupt_and_truncated_model_files(work, tmp_path):
    art = json.loads(work["convert_stdout"])["manifest"]["artifacts"][0]["file"]
    data = open(os.path.join(work["bundle"], art), "rb").read()
    trunc = tmp_path / "trunc.tflite"
    trunc.write_bytes(data[: len(data) // 3])
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00garbage" * 100)
    for p in (trunc, junk):
        r = cli("run", p, work["root"] / "batch.npy")
        assert r.returncode == 2, (p, r.stderr[-2000:])
        assert "Traceback" not in r.stderr


def test_tampered_bundle_is_refused(work, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(work["bundle"], copy)
    art = json.loads(work["convert_stdout"])["manifest"]["artifacts"][0]["file"]
    with open(copy / art, "r+b") as fh:
        fh.seek(200)
        b = fh.read(1)
        fh.seek(200)
        fh.write(bytes([b[0] ^ 0xFF]))
    r = cli("run", copy, work["root"] / "batch.npy")
    assert r.returncode == 2 and "sha256" in r.stderr


def test_missing_calibration_folder(work, tmp_path):
    r = cli("convert", work["model"], "-o", tmp_path / "b", "--calib", tmp_path / "nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "nope" in r.stderr
    assert not (tmp_path / "b").exists()


def test_lambda_model_is_refused_and_runs_no_code(tmp_path):
    import keras

    canary = tmp_path / "canary.txt"
    code = f"lambda x: (open({str(canary)!r}, 'w').write('pwned'), x)[1]"
    fn = eval(code)  # noqa: S307 - building the hostile file on purpose
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(fn), keras.layers.Dense(2)])
    if canary.exists():
        canary.unlink()  # building the model traced the lambda once
    path = tmp_path / "evil.keras"
    model.save(path)
    if canary.exists():
        canary.unlink()
    np.save(tmp_path / "c.npy", np.zeros((16, 4), np.float32))
    r = cli("convert", path, "-o", tmp_path / "out", "--calib", tmp_path / "c.npy")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Lambda" in r.stderr and "--allow-unsafe" in r.stderr
    assert not canary.exists()
    assert not (tmp_path / "out").exists()


def test_h5_needs_explicit_flag(work, tmp_path):
    import keras

    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    p = tmp_path / "legacy.h5"
    m.save(p)
    np.save(tmp_path / "c.npy", np.zeros((16, 4), np.float32))
    r = cli("convert", p, "-o", tmp_path / "out", "--calib", tmp_path / "c.npy", "--precision", "fp32")
    assert r.returncode == 2 and "--allow-legacy-h5" in r.stderr


def test_bench_json_fields(work):
    r = cli("bench", work["bundle"], "--runs", "20", "--warmup", "2", "--json")
    assert r.returncode == 0, r.stderr
    obj = json.loads(r.stdout)
    for key in ("init_ms", "first_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p99_ms", "throughput_per_s",
                "peak_rss_bytes"):
        assert obj[key] > 0, key
    assert obj["p50_ms"] <= obj["p99_ms"]


def test_eval_against_source(work):
    r = cli("eval", work["bundle"], "--data", work["root"] / "test.npz", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    obj = json.loads(r.stdout)
    assert obj["reference"].startswith("source model")
    m = next(iter(obj["artifacts"].values()))
    assert m["top1_agreement"] > 0.9 and m["accuracy"] > 0.8


def test_bad_arguments_exit_2(work):
    r = cli("bench", work["bundle"], "--runs", "0")  # a real bundle: only --runs is wrong
    assert r.returncode == 2 and "--runs" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = cli("bench", "x")
    assert r.returncode == 2 and "does not exist" in r.stderr
    r = cli("convert")
    assert r.returncode == 2
    r = cli("inspect", "/definitely/not/here")
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_report_rebuilds_html(work, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(work["bundle"], copy)
    os.remove(copy / "report.html")
    r = cli("report", copy, "--no-latency")
    assert r.returncode == 0, r.stderr[-2000:]
    html = (copy / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html.replace("http://www.w3.org", "")


def test_convert_with_pruning_records_sparsity(work, tmp_path):
    r = cli("convert", work["model"], "-o", tmp_path / "pruned", "--calib", work["root"] / "calib.npz",
            "--eval", work["root"] / "test.npz", "--prune", "0.5", "--train-data", work["root"] / "calib.npz",
            "--prune-epochs", "1", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    man = json.loads(r.stdout)["manifest"]
    assert man["pruning"]["target"] == 0.5
    assert 0.45 <= man["pruning"]["achieved_total"] <= 0.55
    r = cli("convert", work["model"], "-o", tmp_path / "bad", "--calib", work["root"] / "calib.npz", "--prune", "1.5")
    assert r.returncode == 2 and "Traceback" not in r.stderr


def test_target_gpu_defaults_to_fp16(work, tmp_path):
    r = cli("convert", work["model"], "-o", tmp_path / "gpu", "--calib", work["root"] / "calib.npz", "--target", "gpu",
            "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    art = json.loads(r.stdout)["manifest"]["artifacts"][0]
    assert art["precision"] == "fp16" and art["io"] == "float" and "gpu" in art["targets"]
    r = cli("convert", work["model"], "-o", tmp_path / "x", "--target", "tpu")
    assert r.returncode == 2 and "edgetpu" in r.stderr


def test_run_with_missing_delegate_strict_is_a_user_error(work):
    args = ("run", work["bundle"], work["root"] / "batch.npy", "--delegate", "/nonexistent/libdelegate.so")
    r = cli(*args, "--strict")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "libdelegate" in r.stderr
    r = cli(*args, "--json")  # default: one clear warning, then the CPU runs it
    assert r.returncode == 0, r.stderr[-2000:]
    obj = json.loads(r.stdout)
    assert obj["backend"]["fallback"] is True and obj["results"]


def test_interrupted_swap_restores_the_earlier_bundle(work, tmp_path):
    """kill -9 between moving the old bundle aside and moving the new one in: the next run puts it back."""
    import shutil

    from edgeship.bundle import BundleWriter, stale_temp_dirs
    from edgeship.errors import BundleExistsError

    target = tmp_path / "b"
    shutil.copytree(work["bundle"], target)
    before = (target / "manifest.json").read_bytes()
    os.rename(target, tmp_path / ".b.old-abc123")  # the state such a crash leaves
    with pytest.raises(BundleExistsError):
        with BundleWriter(str(target)):  # no force: the restored bundle must not be replaced
            pass
    assert (target / "manifest.json").read_bytes() == before
    assert stale_temp_dirs(str(target)) == []


def test_bench_all_runs_every_engine_and_says_why_not(work):
    r = cli("bench", work["bundle"], "--all", "--runs", "5", "--warmup", "1", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    combos = json.loads(r.stdout)["combinations"]
    by_backend = {c["backend"]: c for c in combos}
    assert by_backend["litert"]["skipped"] is None and by_backend["litert"]["p50_ms"] > 0
    assert by_backend["litert"]["peak_rss_bytes"] > 0
    # tflite_runtime is not installed here: listed, with the reason, not silently dropped
    assert by_backend["tflite_runtime"]["skipped"]
    r = cli("bench", work["bundle"], "--all", "--runs", "3", "--warmup", "0")
    assert r.returncode == 0 and "litert" in r.stdout and "cannot run" in r.stdout
