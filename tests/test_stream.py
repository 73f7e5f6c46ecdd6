"""Camera streams: sources, the pipelined loop, recording, reconnects, and the `edgeship stream` CLI.

Videos are synthetic (written with cv2.VideoWriter, a few seconds each); the
model is a tiny real .tflite built here and run through edgeship.runtime.load.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
import time
from collections import namedtuple

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgeship.errors import EdgeshipError, InputError  # noqa: E402
from edgeship.runtime.stream import source as V  # noqa: E402
from edgeship.runtime.stream import Stream, format_summary, resolve_display, run_stream  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _synthetic():
    spec = importlib.util.spec_from_file_location("synthetic_video", os.path.join(ROOT, "examples", "synthetic_video.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("video") / "clip.mp4")
    n = _synthetic().write_video(path, seconds=2.0, fps=30, size=(320, 240), seed=1)
    return path, n


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = pytest.importorskip("tensorflow")
    import keras

    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(inp)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inp, out)
    path = str(tmp_path_factory.mktemp("model") / "tiny.tflite")
    with open(path, "wb") as fh:
        fh.write(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


Spec = namedtuple("Spec", "name shape dtype quantization")


class SlowModel:
    """A stand-in Model whose inference takes ``ms`` (sleeping releases the GIL, like a real engine)."""

    def __init__(self, ms: float = 20.0, size: int = 32) -> None:
        self.ms = ms
        self.inputs = (Spec("x", (1, size, size, 3), np.float32, None),)
        self.outputs = (Spec("probs", (1, 3), np.float32, None),)
        self.manifest = {"labels": ["a", "b", "c"], "task": "classification",
                         "preprocessing": {"size": [size, size], "resize": "stretch", "color": "rgb"}}
        self.calls = 0

    def run(self, x):
        time.sleep(self.ms / 1000.0)
        self.calls += 1
        m = float(np.mean(x))
        return {"probs": np.array([[m, 1 - m, 0.0]], np.float32)}


# ------------------------------------------------------------------------------ sources


def test_parse_source_kinds(clip):
    assert V.parse_source("0").kind is V.SourceKind.CAMERA and V.parse_source("0").target == 0
    assert V.parse_source(2).target == 2
    assert V.parse_source("/dev/video1").kind is V.SourceKind.CAMERA
    assert V.parse_source(clip[0]).kind is V.SourceKind.FILE and not V.parse_source(clip[0]).live
    assert V.parse_source("file://" + clip[0]).target == clip[0]
    for url in ("rtsp://10.0.0.2:554/stream", "http://127.0.0.1:8080/stream.mjpg", "https://x/y.m3u8", "udp://@:5000"):
        s = V.parse_source(url)
        assert s.kind is V.SourceKind.NETWORK and s.live and s.api == cv2.CAP_FFMPEG
    csi = V.parse_source("csi://1")
    assert csi.kind is V.SourceKind.GSTREAMER and "nvarguscamerasrc sensor-id=1" in csi.target
    assert csi.target.rstrip().endswith("sync=false") and "appsink" in csi.target
    gst = V.parse_source("videotestsrc ! video/x-raw,width=320")
    assert gst.kind is V.SourceKind.GSTREAMER and "appsink" in gst.target
    assert V.parse_source("gst:v4l2src ! appsink").target == "v4l2src ! appsink"


@pytest.mark.parametrize("bad", ["", "   ", "/no/such/clip.mp4", "csi://x", -1])
def test_parse_source_rejects(bad):
    with pytest.raises(InputError):
        V.parse_source(bad)


def test_unopenable_source_is_a_source_error(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(V.SourceError) as ei:
        V.VideoSource(str(junk)).start()
    assert isinstance(ei.value, EdgeshipError) and "junk.mp4" in str(ei.value)


def test_file_is_read_whole_and_ends(clip):
    path, n = clip
    with V.VideoSource(path) as src:
        idx = [f.index for f in src]
        assert src.ended and src.error is None
    assert idx == list(range(n))


class FakeCapture:
    """A cv2.VideoCapture stand-in: yields frames, then can 'drop' like a lost camera."""

    def __init__(self, frames_before_loss: int | None, counter: list, delay: float = 0.0) -> None:
        self.left = frames_before_loss
        self.counter = counter
        self.delay = delay

    def isOpened(self):  # noqa: N802
        return True

    def read(self):
        if self.delay:
            time.sleep(self.delay)
        if self.left is not None:
            if self.left <= 0:
                return False, None
            self.left -= 1
        self.counter[0] += 1
        img = np.full((48, 64, 3), self.counter[0] % 256, np.uint8)
        return True, img

    def get(self, prop):
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def set(self, *a):
        return True

    def release(self):
        pass


def flaky_opener(plan):
    """plan: list of (opens?, frames before loss) consumed one per open attempt."""
    counter = [0]
    attempts = []

    def opener(spec, open_timeout, read_timeout):
        step = plan[min(len(attempts), len(plan) - 1)]
        attempts.append(step)
        ok, frames = step
        return FakeCapture(frames, counter, delay=0.002) if ok else None

    opener.attempts = attempts
    return opener


def test_lost_live_source_is_reopened_with_backoff():
    opener = flaky_opener([(True, 20), (False, 0), (False, 0), (True, None)])
    src = V.VideoSource("rtsp://camera.invalid/stream", opener=opener, backoff=(0.05, 0.2))
    got = []
    with src:
        t0 = time.perf_counter()
        while len(got) < 40 and time.perf_counter() - t0 < 5:
            f = src.read(timeout=0.5)
            if f is not None:
                got.append(f)
    kinds = [e["event"] for e in src.events]
    assert kinds == ["lost", "reconnected"], src.events
    assert src.reconnects == 1 and len(opener.attempts) == 4
    assert "after 3 attempt(s)" in src.events[1]["message"]
    assert len(got) == 40 and [f.index for f in got] == sorted(f.index for f in got)


def test_live_source_that_never_returns_ends_the_stream():
    opener = flaky_opener([(True, 5), (False, 0)])
    summary = run_stream(SlowModel(1), "rtsp://camera.invalid/x", display="none",
                         source_options={"opener": opener, "backoff": (0.02, 0.05), "max_retries": 3})
    assert summary["ended_by"] == "source_lost"
    assert [e["event"] for e in summary["events"]] == ["lost", "gave_up"]
    # a live source keeps only the newest frame: all 5 were read, and the ones the model was
    # still busy for are skipped rather than queued
    assert summary["frames_read"] == 5
    assert 1 <= summary["frames"] <= 5


def test_live_source_keeps_only_the_newest_frame():
    counter = [0]
    src = V.VideoSource("rtsp://cam.invalid/s", opener=lambda *a: FakeCapture(None, counter, delay=0.001))
    with src:
        time.sleep(0.3)  # nobody reads: frames are replaced, not queued
        f = src.read(timeout=1)
        assert f is not None and src.frames_dropped > 20
        assert counter[0] - f.index <= 3  # it is (nearly) the newest one
        assert (time.perf_counter() - f.t_capture) < 0.1


# ------------------------------------------------------------------------------ the loop


def test_run_stream_file_real_model_and_record(clip, tiny_tflite, tmp_path):
    path, n = clip
    out = str(tmp_path / "out.mp4")
    results = []
    s = run_stream(tiny_tflite, path, display="none", record=out, top_k=2, on_result=results.append)
    assert s["frames"] == n == s["frames_read"] and s["frames_dropped"] == 0
    assert s["ended_by"] == "end_of_source" and s["task"] == "classify" and s["backend"]
    assert [r.index for r in results] == list(range(n))  # in order, nothing lost
    assert all(len(r.results) == 2 for r in results)
    for k in ("capture", "preprocess", "inference", "postprocess", "draw", "latency"):
        assert s["stages_ms"][k]["mean"] is not None and s["stages_ms"][k]["mean"] >= 0
    assert s["fps"] > 0 and s["latency_trend_ms"]
    cap = cv2.VideoCapture(out)
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n
    ok, frame = cap.read()
    assert ok and frame.shape == (240, 320, 3)
    assert s["recorded_frames"] == n
    json.dumps(s, allow_nan=False)
    text = format_summary(s)
    assert "inference" in text and "FPS" in text


def test_pipeline_overlaps_stages(clip):
    """End-to-end FPS stays close to inference-only FPS: preprocessing and drawing hide behind inference."""
    model = SlowModel(ms=25)
    s = run_stream(model, clip[0], display="none", max_frames=40)
    inference_fps = 1000.0 / s["stages_ms"]["inference"]["mean"]
    serial_ms = sum(s["stages_ms"][k]["mean"] for k in ("capture", "preprocess", "inference", "postprocess", "draw"))
    assert s["fps"] >= 0.85 * inference_fps, (s["fps"], inference_fps)
    assert s["fps"] > 1000.0 / serial_ms * 0.98


def test_latency_stays_flat_on_a_live_source(clip):
    """A camera-paced source faster than inference: frames are skipped, latency does not grow."""
    model = SlowModel(ms=50)  # 20 FPS of inference vs 30 FPS of camera
    s = run_stream(model, clip[0], display="none", realtime=True, source_options={"drop": True})
    assert s["frames_dropped"] > 5
    trend = [w["latency_ms"] for w in s["latency_trend_ms"]]
    assert len(trend) >= 4
    assert max(trend[1:]) < 2.5 * 50 + 40, trend  # bounded by ~2 inference periods, not growing
    assert trend[-1] < trend[1] + 40, trend


def test_duration_and_max_frames_stop_cleanly(clip):
    s = run_stream(SlowModel(5), clip[0], display="none", max_frames=7)
    assert s["frames"] == 7 and s["ended_by"] == "max_frames"
    s = run_stream(SlowModel(5), clip[0], display="none", duration=0.3, loop=True, realtime=True)
    assert s["ended_by"] == "duration" and 0.25 < s["elapsed_s"] < 1.5


def test_loop_replays_a_file(clip):
    s = run_stream(SlowModel(1), clip[0], display="none", loop=True, max_frames=clip[1] + 10)
    assert s["frames"] == clip[1] + 10


def test_stream_iterator_and_model_errors(clip):
    class Broken(SlowModel):
        def run(self, x):
            raise InputError("boom: wrong input")

    with pytest.raises(InputError, match="boom"):
        with Stream(Broken(), clip[0]) as st:
            for _ in st:
                pass
    with Stream(SlowModel(1), clip[0], top_k=1) as st:
        r = next(iter(st))
        assert r.index == 0 and r.results[0].label in ("a", "b", "c")
        assert set(r.timings) >= {"capture", "wait", "preprocess", "inference", "postprocess", "draw", "latency"}


def test_window_without_gui_falls_back_to_web():
    mode, why = resolve_display("window")
    if why is None:
        pytest.skip("this OpenCV has a GUI and a display")
    assert mode.value == "web" and "web page" in why
    assert resolve_display("auto")[0].value == "web"
    assert resolve_display("none")[0].value == "none"
    with pytest.raises(InputError):
        resolve_display("tv")


# ------------------------------------------------------------------------------ CLI


def _cli(argv, capfd):
    from edgeship import cli_stream

    rc = cli_stream.main(argv)
    out, err = capfd.readouterr()
    return rc, out, err


def test_cli_stream_json(clip, tiny_tflite, capfd):
    rc, out, err = _cli([tiny_tflite, "--source", clip[0], "--display", "none", "--json", "--max-frames", "10"], capfd)
    assert rc == 0, err
    s = json.loads(out)
    assert s["frames"] == 10 and s["ended_by"] == "max_frames" and s["display"] == "none"


def test_cli_stream_web_fallback_and_text(clip, tiny_tflite, capfd):
    rc, out, err = _cli([tiny_tflite, "--source", clip[0], "--display", "window", "--port", "0", "--max-frames", "5"],
                        capfd)
    assert rc == 0, err
    assert "streaming on http://127.0.0.1:" in err and "5 frames" in out


@pytest.mark.parametrize("argv, needle", [
    (["{model}", "--source", "/no/such.mp4", "--display", "none"], "not a camera index"),
    (["/no/model.tflite", "--source", "0"], "does not exist"),
    (["{model}", "--source", "{clip}", "--threshold", "2"], "--threshold"),
    (["{model}", "--source", "{clip}", "--record", "/no/dir/out.mp4"], "--record"),
    (["{model}", "--source", "rtsp://127.0.0.1:9/none", "--timeout", "1", "--display", "none"], "cannot open"),
])
def test_cli_stream_user_errors_exit_2(argv, needle, clip, tiny_tflite, capfd):
    argv = [a.format(model=tiny_tflite, clip=clip[0]) for a in argv]
    rc, out, err = _cli(argv, capfd)
    assert rc == 2 and needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3


def test_runtime_import_stays_free_of_cv2():
    import subprocess
    import sys

    code = ("import sys; import edgeship.runtime, edgeship.runtime.detect, edgeship.cli_stream; "
            "assert 'cv2' not in sys.modules, 'cv2 imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
