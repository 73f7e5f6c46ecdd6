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

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

import edgeship.runtime as rt  # noqa: E402
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


def _tflite(path, size, filters, layers):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    tf = pytest.importorskip("tensorflow")
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(filters, 3, strides=2, activation="relu")(inp)
    for _ in range(layers - 1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    with open(path, "wb") as fh:
        fh.write(tf.lite.TFLiteConverter.from_keras_model(keras.Model(inp, out)).convert())
    return path


@pytest.fixture(scope="module")
def tiny_tflite(tmp_path_factory):
    """A real (fast) classifier: 32x32x3 -> 3 classes."""
    return _tflite(str(tmp_path_factory.mktemp("model") / "tiny.tflite"), 32, 4, 1)


@pytest.fixture(scope="module")
def tiny(tiny_tflite):
    with rt.load(tiny_tflite) as m:
        yield m


@pytest.fixture(scope="module")
def heavy(tmp_path_factory):
    """A real classifier whose inference is much slower than decoding a 320x240 frame (160x160x3, 4 convs of 64)."""
    path = _tflite(str(tmp_path_factory.mktemp("heavy") / "heavy.tflite"), 160, 64, 4)
    with rt.load(path, threads=1) as m:
        yield m


class Recorded:
    """A real Model whose ``run`` calls are logged as ("inference start"/"inference end", n) events."""

    def __init__(self, model, log: list) -> None:
        self._m, self.log, self.calls = model, log, 0

    def __getattr__(self, name):
        return getattr(self._m, name)

    def run(self, x):
        n = self.calls
        self.log.append(("inference start", n))
        out = self._m.run(x)
        self.log.append(("inference end", n))
        self.calls += 1
        return out


class RecordedSource(V.VideoSource):
    """A real VideoSource whose reads are logged as ("read", frame index) events."""

    def __init__(self, *a, log: list, **kw) -> None:
        super().__init__(*a, **kw)
        self.log = log

    def read(self, timeout=None):
        f = super().read(timeout)
        if f is not None:
            self.log.append(("read", f.index))
        return f


def wait_until(cond, what: str, timeout: float = 30.0) -> None:
    """Poll ``cond`` (a deadline against hangs, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


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

    def __init__(self, frames_before_loss: int | None, counter: list, delay: float = 0.0,
                 hold_after: int | None = None, gate: threading.Event | None = None) -> None:
        self.left = frames_before_loss
        self.counter = counter
        self.delay = delay
        self.hold_after, self.gate = hold_after, gate

    def isOpened(self):  # noqa: N802
        return True

    def read(self):
        if self.hold_after is not None and self.counter[0] >= self.hold_after:
            self.gate.wait()  # the camera has nothing new until the test says so
            return False, None
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
        deadline = time.monotonic() + 60  # against a hang only
        while len(got) < 40 and time.monotonic() < deadline:
            f = src.read(timeout=0.5)
            if f is not None:
                got.append(f)
    kinds = [e["event"] for e in src.events]
    assert kinds == ["lost", "reconnected"], src.events
    assert src.reconnects == 1 and len(opener.attempts) == 4
    assert "after 3 attempt(s)" in src.events[1]["message"]
    assert len(got) == 40 and [f.index for f in got] == sorted(f.index for f in got)


def test_live_source_that_never_returns_ends_the_stream(tiny):
    opener = flaky_opener([(True, 5), (False, 0)])
    summary = run_stream(tiny, "rtsp://camera.invalid/x", display="none",
                         source_options={"opener": opener, "backoff": (0.02, 0.05), "max_retries": 3})
    assert summary["ended_by"] == "source_lost"
    assert [e["event"] for e in summary["events"]] == ["lost", "gave_up"]
    # a live source keeps only the newest frame: all 5 were read, and the ones the model was
    # still busy for are skipped rather than queued
    assert summary["frames_read"] == 5
    assert 1 <= summary["frames"] <= 5


def test_live_source_keeps_only_the_newest_frame():
    counter, gate = [0], threading.Event()
    src = V.VideoSource("rtsp://cam.invalid/s", opener=lambda *a: FakeCapture(None, counter, hold_after=30, gate=gate))
    try:
        with src:
            # nobody reads: the camera delivers 30 frames, then has nothing new; 29 were replaced, not queued
            wait_until(lambda: src.frames_dropped == 29, "29 frames replaced in the one-frame slot")
            f = src.read(timeout=10)
            assert f is not None and f.index == 29 == counter[0] - 1  # the newest one
            assert src.frames_read == 30 and src.frames_dropped == 29
            assert src.read(timeout=0.2) is None  # nothing older was kept behind it
            gate.set()
    finally:
        gate.set()


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


def _overlaps(log):
    """Per inference: was a later frame read, and the previous result delivered, while it ran?"""
    start, end = {}, {}
    for pos, (kind, n) in enumerate(log):
        if kind == "inference start":
            start[n] = pos
        elif kind == "inference end":
            end[n] = pos
    reads = [(pos, n) for pos, (kind, n) in enumerate(log) if kind == "read"]
    results = [(pos, n) for pos, (kind, n) in enumerate(log) if kind == "result"]
    ran = sorted(set(start) & set(end))
    # the k-th inference ran on the k-th frame read (a file source without drop skips nothing)
    pre = sum(any(start[k] < pos < end[k] for pos, i in reads if i > reads[k][1]) for k in ran)
    post = sum(any(start[k] < pos < end[k] for pos, i in results if i < reads[k][1]) for k in ran)
    return len(ran), pre, post


def test_pipeline_overlaps_stages(clip, heavy):
    """Reading/preprocessing the next frame and delivering the previous result happen while a real
    engine runs inference (shown by the order of recorded events, not by timings)."""
    log: list = []
    src = RecordedSource(clip[0], log=log)
    with Stream(Recorded(heavy, log), src) as st:
        for r in st:
            log.append(("result", r.index))
            if r.index >= 19:
                break
    n, pre, post = _overlaps(list(log))
    assert n >= 20
    # A serial loop gives 0 and 0. Pipelined, nearly every inference overlaps both; the bound
    # leaves room for a thread that a busy machine schedules late.
    assert pre >= n // 2, (n, pre, log[:40])
    assert post >= n // 2, (n, post, log[:40])


def test_live_source_skips_frames_instead_of_queueing(clip, heavy):
    """A source faster than inference (a real engine): frames are skipped, never queued behind it."""
    results = []
    s = run_stream(heavy, clip[0], display="none", source_options={"drop": True}, on_result=results.append)
    idx = [r.index for r in results]
    assert s["frames_dropped"] > 0 and s["frames"] == len(results) < s["frames_read"]
    assert idx == sorted(set(idx)) and len(idx) >= 1  # in order, none twice
    assert set(range(s["frames_read"])) - set(idx)  # frames the model was busy for were skipped
    assert s["frames"] + s["frames_dropped"] <= s["frames_read"]  # ... not queued for later


def test_duration_and_max_frames_stop_cleanly(clip, tiny):
    s = run_stream(tiny, clip[0], display="none", max_frames=7)
    assert s["frames"] == 7 and s["ended_by"] == "max_frames"
    # a looping source never ends by itself: only the duration can stop it
    s = run_stream(tiny, clip[0], display="none", duration=0.3, loop=True, realtime=True)
    assert s["ended_by"] == "duration" and s["frames"] >= 1


def test_loop_replays_a_file(clip, tiny):
    s = run_stream(tiny, clip[0], display="none", loop=True, max_frames=clip[1] + 10)
    assert s["frames"] == clip[1] + 10


def test_stream_iterator_and_model_errors(clip, tiny):
    class Broken(Recorded):
        def run(self, x):
            raise InputError("boom: wrong input")

    with pytest.raises(InputError, match="boom"):
        with Stream(Broken(tiny, []), clip[0]) as st:
            for _ in st:
                pass
    with Stream(tiny, clip[0], top_k=1) as st:
        r = next(iter(st))
        assert r.index == 0 and r.results[0].id in (0, 1, 2) and len(r.results) == 1
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
    from edgeship.cli import main

    rc = main(["stream", *argv])
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

    code = ("import sys; import edgeship.runtime, edgeship.runtime.tasks, edgeship.runtime.stream, edgeship.cli.stream; "
            "assert 'cv2' not in sys.modules, 'cv2 imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
