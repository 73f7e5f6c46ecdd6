"""README claims about ``edgeship stream`` flags and ``edgeship demo`` itself, on the CLI.

The stream runs the session digits CNN (INT8 bundle) on a small synthetic video file of digit
images. No wall-clock bounds: what is checked is counted (frames processed and read) or
recorded (why the stream ended, the task, the page's address).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from test_cli_claims_common import cli, cli_capture, cli_json, one_error_line, write_data

pytestmark = pytest.mark.slow
cv2 = pytest.importorskip("cv2")

FPS = 20


def _video(path, x, frames: int) -> str:
    """``frames`` frames at FPS of digit images (64x64 BGR), cycling through ``x``."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (64, 64))
    assert w.isOpened()
    for i in range(frames):
        g = cv2.resize(np.rint(x[1400 + i % 100, :, :, 0] * 255).astype(np.uint8), (64, 64),
                       interpolation=cv2.INTER_NEAREST)
        w.write(cv2.cvtColor(g, cv2.COLOR_GRAY2BGR))
    w.release()
    return str(path)


@pytest.fixture(scope="module")
def work(tmp_path_factory, digits, digits_cnn_file):
    root = tmp_path_factory.mktemp("claims-stream")
    x, y = digits
    files = write_data(str(root), x, y)
    bundle = root / "bundle"
    assert cli("convert", digits_cnn_file, "-o", bundle, "--calib", files["calib"]) == 0
    return {"bundle": str(bundle), "short": _video(root / "short.avi", x, 10), "long": _video(root / "long.avi", x, 200)}


def _stream(capfd, work, source, *extra):
    return cli_json(capfd, "stream", work["bundle"], "--source", source, "--display", "none", *extra)


def test_stream_without_loop_ends_with_the_file(work, capfd):
    s = _stream(capfd, work, work["short"])
    assert s["ended_by"] == "end_of_source"
    assert s["frames_read"] == 10 and 1 <= s["frames"] <= 10


def test_stream_loop_replays_the_file(work, capfd):
    s = _stream(capfd, work, work["short"], "--loop", "--max-frames", "25")
    assert s["ended_by"] == "max_frames"
    assert s["frames"] == 25
    assert s["frames_read"] >= 25 > 10  # more frames than the file has: it was replayed


def test_stream_realtime_paces_the_file_and_duration_stops_it(work, capfd):
    """200 frames at 20 FPS last 10 s when paced like a camera: a 1 s --duration stops the stream first."""
    s = _stream(capfd, work, work["long"], "--realtime", "--duration", "1")
    assert s["ended_by"] == "duration"
    assert 0 < s["frames_read"] < 200


def test_stream_duration_must_be_positive(work, capfd):
    rc, _, err = cli_capture(capfd, "stream", work["bundle"], "--source", work["short"], "--display", "none",
                             "--duration", "0")
    assert rc == 2
    assert "--duration" in one_error_line(err)


def test_stream_task(work, capfd):
    auto = _stream(capfd, work, work["short"], "--max-frames", "3")
    assert auto["task"] == "classify"  # from the bundle
    forced = _stream(capfd, work, work["short"], "--task", "classify", "--max-frames", "3")
    assert forced["task"] == "classify" and forced["frames"] == 3
    rc, _, err = cli_capture(capfd, "stream", work["bundle"], "--source", work["short"], "--display", "none",
                             "--task", "detect", "--max-frames", "3")
    assert rc == 2  # a classifier has no boxes to decode: the user's mistake, said in one line
    assert re.search(r"detect|decod", one_error_line(err), flags=re.I)


def test_stream_web_page_on_the_host_given(work, capfd):
    s = cli_json(capfd, "stream", work["bundle"], "--source", work["short"], "--display", "web", "--host",
                 "127.0.0.1", "--port", "0", "--max-frames", "5")
    assert s["display"] == "web"
    assert re.match(r"http://127\.0\.0\.1:\d+/", s["url"]), s["url"]
    assert not s["url"].endswith(":0/")  # port 0 picked a free port
    rc, _, err = cli_capture(capfd, "stream", work["bundle"], "--source", work["short"], "--display", "web",
                             "--host", "203.0.113.7", "--port", "0", "--max-frames", "5")
    assert rc == 2  # an address this machine does not have (TEST-NET-3): cannot listen there
    assert "203.0.113.7" in one_error_line(err)


# ------------------------------------------------------------------------------- edgeship demo


def test_edgeship_demo_itself(tmp_path):
    """`edgeship demo` (what `make demo` runs): trains, converts, measures, and meets its own targets."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EDGESHIP_PROGRESS="0")
    work = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "edgeship.cli", "demo", "--workdir", str(work)], capture_output=True,
                       text=True, env=env, timeout=900, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "PASS" in r.stdout and "FAIL" not in r.stdout
    with open(work / "demo-report.json") as fh:
        rep = json.load(fh)
    assert rep["size_ratio"] <= 0.30  # INT8 / FP32 file bytes (README: 0.27x)
    acc = rep["accuracy"]
    assert acc["keras_fp32"] >= 0.95 and acc["tflite_fp32"] == pytest.approx(acc["keras_fp32"], abs=0.002)
    assert acc["keras_fp32"] - acc["tflite_int8"] <= 0.005  # within 0.5 points
    # the bundle it wrote is a real one: the CLI classifies the test image the demo names
    m = re.search(r"classify\((\S+)\) -> (\d+)", r.stdout)
    assert m, r.stdout
    img = os.path.join(str(tmp_path), m.group(1))  # printed relative to the demo's working folder (or absolute)
    want = int(os.path.basename(os.path.dirname(img)))  # data/test/<label>/NNNN.png
    assert int(m.group(2)) == want
    r2 = subprocess.run([sys.executable, "-m", "edgeship.cli", "run", rep["bundles"]["int8"], img, "--top-k", "1",
                         "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert json.loads(r2.stdout)["results"][0]["classes"][0]["id"] == want
