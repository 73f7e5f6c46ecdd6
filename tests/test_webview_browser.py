"""The stream's web page in a real headless Chromium: it loads, shows live frames and the stats.

Needs Debian's ``chromium`` (and ``chromium-driver`` for the WebDriver path):
``apt-get install -y chromium chromium-driver``. With chromedriver the test
drives the browser over the W3C WebDriver protocol (plain HTTP, no selenium
needed), waits for the MJPEG stream and the stats to arrive, and takes a
screenshot; with chromium alone it uses ``chromium --headless --screenshot``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgeship.runtime.stream import run_stream  # noqa: E402

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1100,700"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed: `apt-get install -y chromium chromium-driver` (Debian) runs this test",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few W3C WebDriver commands this test needs, over plain HTTP."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = None

    def _call(self, method: str, path: str, body=None, timeout: float = 30.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null").get("value")

    def start(self, user_data_dir: str) -> None:
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": FLAGS + [f"--user-data-dir={user_data_dir}"]}}}}
        self.session = self._call("POST", "/session", caps, timeout=60)["sessionId"]

    def get(self, url: str) -> None:
        self._call("POST", f"/session/{self.session}/url", {"url": url})

    def js(self, script: str):
        return self._call("POST", f"/session/{self.session}/execute/sync", {"script": script, "args": []})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", f"/session/{self.session}/screenshot"))

    def quit(self) -> None:
        if self.session:
            try:
                self._call("DELETE", f"/session/{self.session}", timeout=10)
            except OSError:
                pass


@pytest.fixture()
def live_stream(tmp_path):
    """A stream of a looping synthetic clip, served on a free port, running until the test ends."""
    import importlib.util

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("synthetic_video", os.path.join(root, "examples", "synthetic_video.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    clip = str(tmp_path / "clip.mp4")
    mod.write_video(clip, seconds=2, fps=30, size=(480, 360), seed=3)

    from collections import namedtuple

    Spec = namedtuple("Spec", "name shape dtype quantization")

    class Model:  # a stand-in classifier: the page and the stream are under test here
        inputs = (Spec("x", (1, 32, 32, 3), np.float32, None),)
        outputs = (Spec("p", (1, 2), np.float32, None),)
        manifest = {"labels": ["bright", "dark"], "preprocessing": {"size": [32, 32]}}

        def run(self, x):
            time.sleep(0.01)
            m = float(np.clip(np.mean(x), 0, 1))
            return {"p": np.array([[m, 1 - m]], np.float32)}

    started = threading.Event()
    info = {}
    stop = threading.Event()

    def on_start(d):
        info.update(d)
        started.set()

    def on_result(_):
        if stop.is_set():
            raise KeyboardInterrupt  # ends run_stream cleanly

    summary = {}
    t = threading.Thread(target=lambda: summary.update(run_stream(
        Model(), clip, display="web", port=0, loop=True, realtime=True, duration=60, on_start=on_start,
        on_result=on_result, log=lambda m: None)), daemon=True)
    t.start()
    assert started.wait(20), "the stream did not start"
    yield info["url"]
    stop.set()
    t.join(10)


def _check_screenshot(png: bytes, out_dir) -> None:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[0] > 300 and img.shape[1] > 600
    cv2.imwrite(str(out_dir / "webview.png"), img)
    # The video area (left) shows a frame: many distinct colours, not a blank page.
    view = img[20:340, 20:480]
    assert view.std() > 20, f"the stream area looks uniform (std {view.std():.1f})"
    assert len(np.unique(view.reshape(-1, 3) // 16, axis=0)) > 20
    # The stats panel (right) has text on it: light pixels on the dark background.
    side = img[:, img.shape[1] - 290: img.shape[1] - 20]  # (leave out a scrollbar)
    assert np.count_nonzero(side.max(axis=2) > 150) > 200, "no stats text in the side panel"
    assert np.count_nonzero((side[:, :, 1] > 150) & (side[:, :, 2] < 160)) > 50, "no green stat values"


@pytest.mark.skipif(DRIVER is None, reason="chromedriver missing: `apt-get install -y chromium-driver`")
def test_page_streams_frames_and_stats_webdriver(live_stream, tmp_path):
    port = _free_port()
    proc = subprocess.Popen([DRIVER, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    drv = WebDriver(port)
    try:
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"{drv.base}/status", timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        drv.start(tempfile.mkdtemp(prefix="edgeship-chromium-", dir=str(tmp_path)))
        drv.get(live_stream)
        deadline = time.time() + 20
        state = {}
        while time.time() < deadline:
            state = drv.js(
                "const i=document.getElementById('frame');"
                "return {src:i.src, w:i.naturalWidth, h:i.naturalHeight, fps:document.getElementById('fps').textContent,"
                " rows:document.querySelectorAll('#stats tr').length, status:document.getElementById('status').textContent,"
                " stats:document.getElementById('stats').textContent};")
            if state["src"].endswith("/stream.mjpg") and state["w"] == 480 and state["status"] == "live" \
                    and state["rows"] >= 5 and float(state["fps"] or 0) > 1:
                break
            time.sleep(0.3)
        assert state.get("src", "").endswith("/stream.mjpg"), state
        assert state["w"] == 480 and state["h"] == 360, state
        assert state["status"] == "live" and float(state["fps"]) > 1 and "inference" in state["stats"], state
        time.sleep(0.5)
        _check_screenshot(drv.screenshot(), tmp_path)
    finally:
        drv.quit()
        proc.terminate()
        proc.wait(10)


def test_page_screenshot_cli(live_stream, tmp_path):
    """The same page through `chromium --headless --screenshot` (no driver)."""
    out = tmp_path / "shot.png"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={out}", live_stream]
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
    assert out.is_file(), "chromium wrote no screenshot"
    _check_screenshot(out.read_bytes(), tmp_path)
