"""The MJPEG web view: routes, newest frame per client, slow clients, the client cap, and a
live HTTP source that drops and comes back (read by the stream's own VideoSource)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from edgeship.runtime.stream import VideoSource  # noqa: E402
from edgeship.runtime.stream import WebView, WebViewError  # noqa: E402


class Publisher:
    """Publishes numbered frames at ``fps`` until stopped; counts them."""

    def __init__(self, view: WebView, fps: float = 60.0) -> None:
        self.view, self.period, self.count = view, 1.0 / fps, 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            img = np.zeros((120, 160, 3), np.uint8)
            img[:, :, 1] = (self.count * 5) % 255
            cv2.putText(img, str(self.count), (10, 80), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
            self.view.publish(img)
            self.view.set_stats({"fps": 60.0, "frames": self.count, "stage_ms": {"inference": 1.5}})
            self.count += 1
            time.sleep(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join(2)


def read_mjpeg_frames(url: str, n: int, timeout: float = 5.0) -> list:
    """Parse ``n`` JPEG parts out of a multipart MJPEG response."""
    frames = []
    with urllib.request.urlopen(url, timeout=timeout) as r:
        assert r.headers["Content-Type"].startswith("multipart/x-mixed-replace")
        while len(frames) < n:
            line = r.readline()
            if line.lower().startswith(b"content-length:"):
                size = int(line.split(b":")[1])
                r.readline()  # blank line
                frames.append(r.read(size))
    return frames


def test_routes_page_stats_frame_and_stream():
    with WebView(port=0) as view, Publisher(view):
        page = urllib.request.urlopen(view.url, timeout=5).read().decode()
        assert "/stream.mjpg" in page and "/stats.json" in page and "<img" in page
        stats = {}
        deadline = time.monotonic() + 30  # against a hang only
        while "fps" not in stats and time.monotonic() < deadline:  # until the publisher's first stats
            stats = json.loads(urllib.request.urlopen(view.url + "stats.json", timeout=5).read())
        assert stats["fps"] == 60.0 and stats["stage_ms"]["inference"] == 1.5 and "viewers" in stats
        jpg = urllib.request.urlopen(view.url + "frame.jpg", timeout=5).read()
        img = cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (120, 160, 3) and img.std() > 5
        parts = read_mjpeg_frames(view.url + "stream.mjpg", 5)
        decoded = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in parts]
        assert all(d is not None and d.shape == (120, 160, 3) for d in decoded)
        assert len({int(d[:, :, 1].mean()) for d in decoded}) >= 3  # different frames, not one repeated
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(view.url + "nope", timeout=5)
        assert ei.value.code == 404


def test_listens_only_where_asked_and_reports_busy_ports():
    with WebView(port=0) as view:
        assert view.url.startswith("http://127.0.0.1:")
        with pytest.raises(WebViewError, match="another --port"):
            WebView(port=view.port).start()


def test_slow_client_stalls_neither_capture_nor_other_clients():
    with WebView(port=0, send_timeout=2.0, max_clients=3) as view, Publisher(view, fps=120) as pub:
        # A client that connects to the stream and never reads a byte.
        stuck = socket.create_connection(("127.0.0.1", view.port))
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(b"GET /stream.mjpg HTTP/1.0\r\n\r\n")
        deadline = time.monotonic() + 30  # against a hang only
        while view.clients < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert view.clients == 1  # the stuck client is being served (and never reads)
        before = pub.count
        parts = read_mjpeg_frames(view.url + "stream.mjpg", 20)
        during = pub.count - before
        decoded = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in parts]
        assert len(parts) == 20 and all(d is not None for d in decoded)
        # the other client got 20 frames, and capture kept publishing meanwhile: at least one new
        # frame per part sent (the web view sends a client only frames it has not seen)
        assert during >= 18, during
        assert len({int(d[:, :, 1].mean()) for d in decoded}) >= 10
        stuck.close()


def test_client_cap():
    with WebView(port=0, max_clients=1) as view, Publisher(view):
        first = urllib.request.urlopen(view.url + "stream.mjpg", timeout=5)
        first.readline()
        deadline = time.time() + 2
        while view.clients < 1 and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(view.url + "stream.mjpg", timeout=5)
        assert ei.value.code == 503
        first.close()
        deadline = time.time() + 5
        while view.clients and time.time() < deadline:
            time.sleep(0.05)
        assert read_mjpeg_frames(view.url + "stream.mjpg", 2)  # the slot is free again


def test_http_source_drops_and_is_reopened():
    """A real network source (MJPEG over HTTP, through OpenCV's FFmpeg) goes away and comes back."""
    view = WebView(port=0).start()
    port = view.port
    pub = Publisher(view, fps=30).__enter__()
    src = VideoSource(f"http://127.0.0.1:{port}/stream.mjpg", open_timeout=3, read_timeout=1.5, backoff=(0.2, 0.5))
    try:
        src.start()
        assert src.read(timeout=3) is not None
        pub.__exit__()
        view.close()  # the camera goes away
        deadline = time.time() + 6
        while not src.events and time.time() < deadline:
            src.read(timeout=0.2)
        assert src.events and src.events[0]["event"] == "lost"
        view = WebView(port=port).start()  # ... and comes back on the same address
        pub = Publisher(view, fps=30).__enter__()
        deadline = time.time() + 10
        while src.reconnects == 0 and time.time() < deadline:
            src.read(timeout=0.2)
        assert src.reconnects == 1 and src.events[-1]["event"] == "reconnected"
        frames = [src.read(timeout=2) for _ in range(3)]
        assert all(f is not None for f in frames) and not src.ended
    finally:
        src.close()
        pub.__exit__()
        view.close()
