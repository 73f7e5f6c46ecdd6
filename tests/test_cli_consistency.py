"""The CLI speaks one language: one-line errors in its own flags, one missing-path message,
JSON errors with --json, every option's default in its help, and the commands the issue lists.

Real engines and real files; ``edgeship.cli.main`` in-process where a subprocess is not the point.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from edgeship.cli import build_parser, main
from edgeship.cli.common import cli_message

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", EDGESHIP_PROGRESS="0")
NOISE = ("oneDNN", "cuda", "cuInit", "absl::InitializeLog", "I0000 ", "E0000 ", "W0000 ", "XNNPACK")


def run_cli(capfd, *args):
    rc = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return rc, out, err


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeship: error: ") and "Traceback" not in err and "usage:" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("consistency")
    x, y = digits
    np.savez(root / "calib.npz", x=x[:200], y=y[:200])
    np.save(root / "batch.npy", x[1400:1402])
    (root / "model.keras").write_bytes(b"not really a model")  # enough for checks made before loading
    return root


@pytest.fixture(scope="module")
def bundle(files, digits_cnn_file):
    out = files / "bundle"
    rc = main(["convert", digits_cnn_file, "-o", str(out), "--calib", str(files / "calib.npz"),
               "--labels", ",".join(f"d{i}" for i in range(10))])
    assert rc == 0
    return out


# ----------------------------------------------------------------------------- entry points


def test_python_dash_m_edgeship_works():
    r = subprocess.run([sys.executable, "-m", "edgeship", "--version"], capture_output=True, text=True, env=ENV,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("edgeship "), r.stderr
    r = subprocess.run([sys.executable, "-m", "edgeship", "inspect", "/no/such/bundle"], capture_output=True,
                       text=True, env=ENV, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == "edgeship: error: model '/no/such/bundle' does not exist"


# ----------------------------------------------------------------------------- argparse mistakes


@pytest.mark.parametrize("argv, needle", [
    ([], "a command is needed"),
    (["bench", "x", "--bogus"], "unrecognized arguments: --bogus (see edgeship bench --help)"),
    (["convert"], "the following arguments are required: model, -o/--output"),
    (["bench", "x", "--runs", "0"], "--runs: must be >= 1, got 0"),
    (["convert", "m", "-o", "x", "--precision", "int4"], "--precision: invalid choice: 'int4'"),
    (["convert", "m", "-o", "x", "--target", "tpu"], "expected one of cpu, edgetpu, gpu, jetson"),
    (["run", "m", "i.png", "--device", "tpu"], "--device: 'tpu' is not supported"),
    (["stream", "m", "--source", "0", "--iou", "2"], "--iou: must be in [0, 1], got 2"),
])
def test_argparse_mistakes_are_one_line_exit_2(capfd, argv, needle):
    rc, out, err = run_cli(capfd, *argv)
    assert rc == 2 and out == ""
    assert needle in one_error(err)


def test_json_errors_are_one_object_on_stdout(capfd, files):
    rc, out, err = run_cli(capfd, "inspect", files / "nope", "--json")
    assert rc == 2
    assert json.loads(out) == {"error": f"model {str(files / 'nope')!r} does not exist", "type": "InputError",
                               "exit_code": 2}
    one_error(err)
    rc, out, err = run_cli(capfd, "bench", files / "nope", "--runs", "0", "--json")  # an argparse mistake too
    assert rc == 2 and json.loads(out)["exit_code"] == 2 and "--runs" in json.loads(out)["error"]


# ----------------------------------------------------------------------------- one missing-path message


def test_missing_paths_read_the_same_in_every_command(capfd, files):
    nope = str(files / "missing")
    model = str(files / "model.keras")
    cases = {
        "model": [["convert", nope, "-o", files / "o", "--calib", "random"], ["inspect", nope], ["run", nope, "x.npy"],
                  ["eval", nope, "--data", files / "calib.npz"], ["bench", nope], ["report", nope],
                  ["stream", nope, "--source", "0"]],
        "input": [["run", files / "bundle-for-input", nope]],
        "--calib": [["convert", model, "-o", files / "o", "--calib", nope]],
        "--eval": [["convert", model, "-o", files / "o", "--calib", "random", "--eval", nope]],
        "--train-data": [["convert", model, "-o", files / "o", "--calib", "random", "--train-data", nope]],
        "--data": [["eval", files, "--data", nope]],
        "--model": [["devices", "--model", nope]],
    }
    (files / "bundle-for-input").mkdir(exist_ok=True)
    for what, commands in cases.items():
        for argv in commands:
            rc, _out, err = run_cli(capfd, *argv)
            assert rc == 2, (argv, err)
            assert one_error(err) == f"edgeship: error: {what} {nope!r} does not exist", argv
    assert not (files / "o").exists()


def test_report_source_is_checked_and_its_help_says_what_it_does(capfd, bundle):
    rc, _out, err = run_cli(capfd, "report", bundle, "--source", bundle / "missing.keras")
    assert rc == 2 and "--source" in one_error(err) and "does not exist" in err
    report = _subparser("report")
    source = next(a for a in report._actions if a.dest == "source")
    assert "per-layer" not in source.help and "size" in source.help


# ----------------------------------------------------------------------------- errors in the CLI's words


def test_calib_is_checked_in_the_cli_whatever_the_precision_default(capfd, files):
    rc, _out, err = run_cli(capfd, "convert", files / "model.keras", "-o", files / "o")  # default precision: int8
    assert rc == 2
    line = one_error(err)
    assert "--precision int8 (the default) needs calibration data" in line and "--calib" in line
    assert "calib=" not in line
    rc, _out, err = run_cli(capfd, "convert", files / "model.keras", "-o", files / "o", "--precision", "int16x8")
    assert rc == 2 and "--precision int16x8 needs calibration data" in one_error(err)


@pytest.mark.parametrize("flags, needle", [
    (["--target", "edgetpu", "--precision", "fp16"], "--precision int8"),
    (["--preprocess", "size=8"], "size takes HxW"),
    (["--preprocess", "scale=1/0"], "non-zero denominator"),
    (["--input-shape", "1,8"], "--input-shape 1,8"),
    (["--labels", "a,b,c"], "--labels has 3 names but the model has 10 classes"),
])
def test_converter_errors_speak_cli(capfd, files, digits_cnn_file, flags, needle):
    rc, _out, err = run_cli(capfd, "convert", digits_cnn_file, "-o", files / "refused", "--calib",
                            files / "calib.npz", *flags)
    assert rc == 2
    line = one_error(err)
    assert needle in line
    for raw in ("not enough values to unpack", "division by zero", "precision='", "input_shape"):
        assert raw not in line, line
    assert not re.search(r"(?<![-\w])labels has", line), line
    assert not (files / "refused").exists()


def test_param_names_become_flags():
    flags = {"precision": "--precision", "io": "--io", "formats": "--formats", "calib": "--calib",
             "input_shape": "--input-shape", "eval": "--eval", "max_drop": "--max-drop"}
    assert cli_message("target edgetpu needs precision='int8', got 'fp16'", flags) == \
        "target edgetpu needs --precision int8, got 'fp16'"
    assert cli_message("io='int8' or io='uint8'", flags) == "--io int8 or --io uint8"
    assert cli_message("formats=['onnx'] lacks tflite", flags) == "--formats onnx lacks tflite"
    assert cli_message("input_shape (1, 8) has 2 dimensions", flags) == "--input-shape 1,8 has 2 dimensions"
    assert cli_message("pass calib= a folder or eval_data='x.npz'", flags) == "pass --calib a folder or --eval x.npz"
    assert cli_message("set `max_drop`", flags) == "set --max-drop"
    assert cli_message("--precision int8 stays", flags) == "--precision int8 stays"  # already a flag
    assert cli_message("the precision of the model", flags) == "the precision of the model"  # prose stays
    assert cli_message("strict=True forbids it; strict True too", {"strict": "--strict"}) == \
        "--strict forbids it; --strict too"


def test_run_device_fallback_warns_once_in_cli_words_and_strict_refuses(capfd, bundle, files):
    rc, out, err = run_cli(capfd, "run", bundle, files / "batch.npy", "--device", "npu", "--json")
    assert rc == 0, err
    assert json.loads(out)["backend"]["fallback"] is True
    warnings = [ln for ln in err.splitlines() if ln.startswith("edgeship: warning: ")]
    assert len(warnings) == 1 and "--device npu" in warnings[0], err
    rc, out, err = run_cli(capfd, "run", bundle, files / "batch.npy", "--device", "npu", "--strict")
    assert rc == 2 and "--device npu" in one_error(err) and "strict=" not in err


# ----------------------------------------------------------------------------- options and commands


def _subparser(name) -> argparse.ArgumentParser:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


COMMANDS = ("convert", "inspect", "run", "eval", "bench", "report", "demo", "stream", "devices", "sweep")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_with_its_default(command):
    for a in _subparser(command)._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        assert a.help, f"{command} {a.dest} has no help"
        if a.option_strings and a.default not in (None, False) and not a.required:
            assert "default" in a.help.lower(), f"{command} {a.option_strings[0]} does not say its default"


@pytest.mark.parametrize("command", COMMANDS)
def test_choices_come_from_the_vocabulary(command):
    from edgeship import vocab

    known = {vocab.Precision: "precision", vocab.IOType: "io", vocab.CalibMethod: "calib_method"}
    for a in _subparser(command)._actions:
        for enum, dest in known.items():
            if a.dest == dest:
                assert tuple(a.choices) == vocab.values(enum)


def test_stream_takes_device_delegate_strict_iou_and_runs(capfd, bundle, tmp_path):
    cv2 = pytest.importorskip("cv2")
    video = str(tmp_path / "clip.avi")
    w = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(12):
        w.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    w.release()
    rc, out, err = run_cli(capfd, "stream", bundle, "--source", video, "--display", "none", "--json", "--max-frames",
                           "5", "--device", "cpu", "--strict", "--iou", "0.3", "--task", "classification")
    assert rc == 0, err
    assert json.loads(out)["frames"] == 5
    dests = {a.dest for a in _subparser("stream")._actions}
    assert {"device", "delegate", "strict", "iou"} <= dests
    rc, out, err = run_cli(capfd, "stream", bundle, "--source", video, "--display", "none", "--max-frames", "2",
                           "--delegate", "/nonexistent/libdelegate.so", "--strict")
    assert rc == 2 and "libdelegate" in one_error(err)


def test_report_takes_json(capfd, bundle):
    rc, out, err = run_cli(capfd, "report", bundle, "--no-latency", "--json")
    assert rc == 0, err
    obj = json.loads(out)
    assert os.path.isfile(obj["markdown"]) and os.path.isfile(obj["html"])


def test_devices_lists_only_what_can_run_here(capfd):
    from edgeship.runtime import devices

    rc, out, _err = run_cli(capfd, "devices", "--no-load")
    assert rc == 0
    report = devices(try_load=False)
    missing = [b["name"] for b in report["tflite"] if not b["available"]]
    listed = [ln for ln in out.splitlines() if not ln.startswith("not here:")]
    assert not [ln for ln in listed if ln.lstrip().startswith("no ")], out
    for name in missing:
        assert not [ln for ln in listed if f" {name} " in f"{ln} "], (name, out)
        assert name in out.splitlines()[-1]  # named once, in the "not here" line
    rc, out_all, _err = run_cli(capfd, "devices", "--no-load", "--all")
    assert rc == 0 and all(name in out_all for name in missing)


# ----------------------------------------------------------------------------- progress and a quiet demo


def test_progress_lines_survive_a_silenced_fd2(capfd, tmp_path, monkeypatch):
    from edgeship import progress

    monkeypatch.delenv("EDGESHIP_PROGRESS", raising=False)  # the suite turns progress off
    progress.pin_console(lines=True)
    sink = open(tmp_path / "sink", "wb")
    saved = os.dup(2)
    try:
        os.dup2(sink.fileno(), 2)  # what a library does around TensorFlow
        with progress.step("converting"):
            for _ in progress.progress(range(3), total=3, desc="calibration images"):
                pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        sink.close()
        progress.unpin_console()
    err = capfd.readouterr().err
    assert err.splitlines() == ["converting ...", "  calibration images (3) ..."]
    assert (tmp_path / "sink").read_bytes() == b""


def test_quiet_native_hides_fd2_unless_the_block_fails(capfd):
    from edgeship.demos.quiet import quiet_native

    with quiet_native():
        os.write(2, b"I0000 oneDNN noise\n")
    assert capfd.readouterr().err == ""
    with pytest.raises(RuntimeError):
        with quiet_native():
            os.write(2, b"the reason it failed\n")
            raise RuntimeError("boom")
    assert "the reason it failed" in capfd.readouterr().err


@pytest.mark.slow
def test_demo_output_is_for_a_person_and_demo_takes_json(tmp_path):
    env = dict(os.environ)
    env.pop("EDGESHIP_PROGRESS", None)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    cmd = [sys.executable, "-m", "edgeship", "demo", "--workdir", str(tmp_path), "--quick"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    text = r.stdout + r.stderr
    assert not [ln for ln in text.splitlines() if any(n in ln for n in NOISE)], text
    for step in ("Training digits_cnn", "Converting", "calibration images", "validating", "Measuring"):
        assert step in r.stderr, r.stderr
    assert "TFLite INT8" in r.stdout and "PASS" in r.stdout
    r = subprocess.run(cmd + ["--json"], capture_output=True, text=True, env=env, timeout=900)  # cached model
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(r.stdout)
    assert figures["model_cached"] is True and figures["targets_met"] is True


# ----------------------------------------------------------------------------- structure


def _edgeship_imports(path: str, package: str) -> set:
    import ast

    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [f"{mod}.{a.name}" for a in node.names] if not node.module else [mod]
                out.update(names)
            elif (node.module or "").startswith("edgeship"):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("edgeship"))
    return out


def test_cli_and_demos_have_no_import_circles():
    """Commands import only the shared helpers (never each other or the parser); demos never import the CLI."""
    import edgeship.cli as cli_pkg
    import edgeship.demos as demos_pkg

    cli_dir = os.path.dirname(cli_pkg.__file__)
    commands = ("convert", "inspect", "run", "eval", "bench", "report", "demo", "stream", "devices", "common")
    for name in commands:
        deps = _edgeship_imports(os.path.join(cli_dir, f"{name}.py"), "edgeship.cli")
        inside = {d for d in deps if d.startswith("edgeship.cli")}
        assert inside <= {"edgeship.cli.common"} or (name == "common" and not inside), (name, inside)
    demos_dir = os.path.dirname(demos_pkg.__file__)
    for f in os.listdir(demos_dir):
        if f.endswith(".py"):
            deps = _edgeship_imports(os.path.join(demos_dir, f), "edgeship.demos")
            assert not [d for d in deps if d.startswith("edgeship.cli")], (f, deps)
