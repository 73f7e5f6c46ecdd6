"""Video sources for camera streams: a URI in, the newest frame out.

``VideoSource("0")`` (camera index), ``VideoSource("clip.mp4")`` (file),
``VideoSource("rtsp://cam/stream")`` (network), ``VideoSource("csi://0")`` (a
Jetson CSI camera through GStreamer) or any GStreamer pipeline string.

A reader thread pulls frames from OpenCV as fast as the source gives them.
For live sources it keeps only the newest frame (latency does not grow and
memory stays bounded); a lost live source is reopened with exponential
backoff, and every loss and reconnect is recorded in :attr:`VideoSource.events`.
Files are read frame by frame (nothing dropped) and their end ends the run.

When frames may be dropped (live sources, ``realtime`` files) and the capture
supports it, the reader ``grab()``s every frame (keeping up with the source)
but ``retrieve()``s (decodes/converts to BGR) only when a consumer is waiting
in :meth:`VideoSource.read`: frames nobody takes are never converted, and the
frame handed out is the newest one. Grab and retrieve stay on the reader
thread (a ``cv2.VideoCapture`` is not shared between threads).

OpenCV is imported inside the functions that need it (``edgeship.runtime``
imports no cv2 at module level).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from ...errors import InputError, SourceError
from ...preprocess import opencv
from .options import SourceOptions

__all__ = [
    "Frame",
    "SourceError",
    "SourceKind",
    "SourceOptions",
    "SourceSpec",
    "VideoSource",
    "csi_pipeline",
    "open_capture",
    "parse_source",
]

NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


class SourceKind(str, Enum):
    CAMERA = "camera"
    FILE = "file"
    NETWORK = "network"
    GSTREAMER = "gstreamer"


@dataclass(frozen=True)
class SourceSpec:
    """What a ``--source`` URI means.

    ``target`` is what ``cv2.VideoCapture`` opens (an int for a camera index);
    ``api`` the OpenCV backend preference; ``live`` whether frames arrive in
    real time (camera, network) rather than on demand (file).
    """

    uri: str
    kind: SourceKind
    target: int | str
    api: int
    live: bool


def csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The GStreamer pipeline for a Jetson CSI camera (``nvarguscamerasrc``) ending in a BGR appsink."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw,format=BGRx ! videoconvert ! "
        "video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def parse_source(uri: str | int) -> SourceSpec:
    """Parse a ``--source`` value.

    Accepted: a camera index (``0``) or device (``/dev/video0``); a video file
    (``clip.mp4``, ``file:///data/clip.mp4``); ``rtsp://``, ``http(s)://``,
    ``rtmp://``, ``udp://``, ``tcp://``, ``srt://`` URLs; ``csi://N`` (Jetson CSI
    camera N); a GStreamer pipeline (contains ``!``, optionally prefixed
    ``gst:``).

    Raises:
        InputError: the value is empty, or names a file that does not exist.
        MissingDependencyError: OpenCV is not installed.
    """
    cv2 = opencv()
    if isinstance(uri, bool):
        raise InputError(f"--source {uri!r} is not a camera index, file, URL or pipeline")
    if isinstance(uri, int):
        if uri < 0:
            raise InputError(f"--source {uri}: a camera index must be >= 0")
        return SourceSpec(str(uri), SourceKind.CAMERA, uri, cv2.CAP_ANY, True)
    text = str(uri).strip()
    if not text:
        raise InputError("--source is empty; expected a camera index, a video file, a URL or a GStreamer pipeline")
    low = text.lower()
    if text.isdigit():
        return SourceSpec(text, SourceKind.CAMERA, int(text), cv2.CAP_ANY, True)
    if low.startswith("/dev/video"):
        return SourceSpec(text, SourceKind.CAMERA, text, getattr(cv2, "CAP_V4L2", cv2.CAP_ANY), True)
    if low.startswith("csi://"):
        rest = text[6:]
        if not rest.isdigit():
            raise InputError(f"--source {text!r}: expected csi://N with N the sensor id, e.g. csi://0")
        return SourceSpec(text, SourceKind.GSTREAMER, csi_pipeline(int(rest)), cv2.CAP_GSTREAMER, True)
    if low.startswith("gst:") or ("!" in text and not low.startswith(NETWORK_SCHEMES)):
        pipe = text[4:].strip() if low.startswith("gst:") else text
        if "appsink" not in pipe:
            pipe += " ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false"
        return SourceSpec(text, SourceKind.GSTREAMER, pipe, cv2.CAP_GSTREAMER, True)
    if low.startswith(NETWORK_SCHEMES):
        return SourceSpec(text, SourceKind.NETWORK, text, cv2.CAP_FFMPEG, True)
    path = text[7:] if low.startswith("file://") else text
    if not os.path.isfile(path):
        raise InputError(
            f"--source {text!r} is not a camera index, an existing video file, a URL "
            "(rtsp://, http://, ...) or a GStreamer pipeline"
        )
    return SourceSpec(text, SourceKind.FILE, path, cv2.CAP_ANY, False)


class Frame(NamedTuple):
    """One captured frame.

    ``t_capture`` is ``time.perf_counter()`` when the frame was read; ``capture_ms``
    how long ``read()`` took (grab and decode).
    """

    image: np.ndarray
    index: int
    t_capture: float
    capture_ms: float


Opener = Callable[[SourceSpec, float, float], Any]


def open_capture(spec: SourceSpec, open_timeout: float, read_timeout: float):
    """Open ``spec`` with OpenCV (a ``cv2.VideoCapture``); network sources get open/read timeouts."""
    cv2 = opencv()
    if spec.kind is SourceKind.NETWORK:
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout * 1000),
            cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout * 1000),
        ]
        return cv2.VideoCapture(spec.target, spec.api, params)
    return cv2.VideoCapture(spec.target, spec.api)


class VideoSource:
    """Frames from a URI, read on a background thread.

    Args:
        source: a URI (see :func:`parse_source`) or a :class:`SourceSpec`.
        options: how to read it (:class:`~edgeship.runtime.stream.SourceOptions`:
            timeouts, ``drop``, ``realtime``, ``loop``, ``reconnect``,
            ``max_retries``, ``backoff``, capture size, ``opener``); or give its
            fields as keywords (``VideoSource(uri, loop=True)``).

    Raises:
        InputError: a bad URI or option (here); SourceError: the source cannot
            be opened at all (from :meth:`start`).
    """

    def __init__(self, source: str | int | SourceSpec, options: SourceOptions | None = None, **fields) -> None:
        if options is not None and fields:
            raise InputError("pass either options= or SourceOptions fields as keywords, not both")
        opts = SourceOptions.of(options if options is not None else fields)
        self.options = opts
        self.spec = source if isinstance(source, SourceSpec) else parse_source(source)
        self.open_timeout = float(opts.open_timeout)
        self.read_timeout = float(opts.read_timeout)
        self.drop = (self.spec.live or bool(opts.realtime)) if opts.drop is None else bool(opts.drop)
        self.realtime = bool(opts.realtime)
        self.loop = bool(opts.loop)
        self.reconnect = self.spec.live if opts.reconnect is None else bool(opts.reconnect)
        self.max_retries = opts.max_retries
        self.backoff = opts.backoff
        self._request = (opts.width, opts.height, opts.fps)
        self._opener: Opener = opts.opener or open_capture
        self._cap = None
        self._cap_lock = threading.Lock()  # the reader's use of the capture vs release from close()
        self._waiting = 0  # consumers blocked in read()
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended = False
        self._error: str | None = None
        self.fps: float = 0.0  # the source's nominal frame rate (0 when unknown)
        self.size: tuple[int, int] | None = None  # (width, height) once known
        self.frames_read = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.events: list[dict] = []
        self.on_event: Callable[[dict], None] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> "VideoSource":
        if self._thread is not None:
            return self
        self._cap = self._try_open()
        if self._cap is None:
            raise SourceError(
                f"cannot open video source {self.spec.uri!r} ({self.spec.kind.value}"
                f"{', waited up to %.0f s' % self.open_timeout if self.spec.kind is SourceKind.NETWORK else ''})"
            )
        self._thread = threading.Thread(target=self._reader, name="edgeship-capture", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the reader thread and release the source (idempotent)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        t, self._thread = self._thread, None
        if t is not None:
            t.join(timeout=max(2.0, self.read_timeout + 1.0))
        with self._cap_lock:
            cap, self._cap = self._cap, None
            if cap is not None and (t is None or not t.is_alive()):
                cap.release()

    def __enter__(self) -> "VideoSource":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def ended(self) -> bool:
        """True once the source has ended (end of file, or gave up reconnecting) and its last frame was taken."""
        with self._cond:
            return self._ended and self._slot is None

    @property
    def error(self) -> str | None:
        """Why a live source ended (None for a clean end of file)."""
        return self._error

    # -- reading -------------------------------------------------------------------------

    def read(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not returned yet; waits up to ``timeout`` seconds.

        Returns None when the source has ended, or when ``timeout`` passed
        without a new frame (check :attr:`ended` to tell them apart).
        """
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            self._waiting += 1
            try:
                while self._slot is None:
                    if self._ended or self._stop.is_set():
                        return None
                    remaining = None if deadline is None else deadline - time.perf_counter()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._cond.wait(remaining if remaining is not None else 0.5)
            finally:
                self._waiting -= 1
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    def __iter__(self) -> Iterator[Frame]:
        self.start()
        while True:
            f = self.read(timeout=0.5)
            if f is not None:
                yield f
            elif self.ended or self._stop.is_set():
                return

    # -- internals -----------------------------------------------------------------------

    def _event(self, kind: str, message: str) -> None:
        ev = {"t": time.time(), "event": kind, "message": message}
        self.events.append(ev)
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # a logging callback must not kill the reader
                pass

    def _try_open(self):
        cv2 = opencv()
        try:
            cap = self._opener(self.spec, self.open_timeout, self.read_timeout)
        except cv2.error:
            return None
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            return None
        w, h, fps = self._request
        if self.spec.kind is SourceKind.CAMERA:
            if w:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
            if h:
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
            if fps:
                cap.set(cv2.CAP_PROP_FPS, fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        try:
            f = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        except Exception:
            f = 0.0
        self.fps = f if 0 < f < 1000 else 0.0
        return cap

    def _publish(self, frame: Frame) -> bool:
        """Hand a frame to the consumer. Returns False when stopping."""
        with self._cond:
            if self.drop:
                if self._slot is not None:
                    self.frames_dropped += 1
            else:
                while self._slot is not None and not self._stop.is_set():
                    self._cond.wait(0.5)
                if self._stop.is_set():
                    return False
            self._slot = frame
            self._cond.notify_all()
        return True

    def _finish(self, error: str | None = None) -> None:
        with self._cond:
            self._ended = True
            self._error = error
            self._cond.notify_all()

    def _reopen(self, reason: str) -> bool:
        """Reopen a lost live source with exponential backoff. False when giving up or stopping."""
        self._event("lost", f"source {self.spec.uri!r} lost ({reason}); reconnecting")
        with self._cap_lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
        delay, attempts, t0 = self.backoff[0], 0, time.perf_counter()
        while not self._stop.is_set():
            if self._stop.wait(delay):
                return False
            attempts += 1
            cap = self._try_open()
            if cap is not None:
                with self._cap_lock:
                    self._cap = cap
                self.reconnects += 1
                self._event(
                    "reconnected",
                    f"source {self.spec.uri!r} reopened after {attempts} attempt(s), {time.perf_counter() - t0:.1f} s",
                )
                return True
            if self.max_retries is not None and attempts >= self.max_retries:
                self._event("gave_up", f"source {self.spec.uri!r} not back after {attempts} attempt(s)")
                return False
            delay = min(delay * 2, self.backoff[1])
        return False

    def _reader(self) -> None:
        cv2 = opencv()
        index = 0
        t_next = time.perf_counter()
        period = (1.0 / self.fps) if (self.realtime and self.fps) else 0.0
        failures = 0
        while not self._stop.is_set():
            cap = self._cap
            paced, t_grab = False, None
            split = self.drop and hasattr(cap, "grab") and hasattr(cap, "retrieve")
            t0 = time.perf_counter()
            try:
                if split:  # fetch every frame; decode only the ones a consumer waits for
                    with self._cap_lock:
                        ok = bool(cap.grab())
                    img = None
                    if ok and period:  # a file paced like a camera: the frame "arrives" at its time
                        t_next = max(t_next + period, time.perf_counter())
                        wait = t_next - time.perf_counter()
                        if wait > 0 and self._stop.wait(wait):
                            break
                        paced = True
                    t_grab = time.perf_counter()
                    if ok:
                        with self._cond:
                            wanted = self._waiting > 0 and self._slot is None
                        if not wanted:
                            self.frames_read += 1
                            self.frames_dropped += 1
                            index += 1
                            continue
                        with self._cap_lock:
                            ok, img = cap.retrieve()
                else:
                    ok, img = cap.read()
            except cv2.error as exc:
                ok, img = False, None
                reason = str(exc).strip().splitlines()[-1]
            else:
                reason = "read failed"
            t1 = time.perf_counter()
            if ok and img is not None:
                failures = 0
                if self.size is None:
                    self.size = (int(img.shape[1]), int(img.shape[0]))
                read_ms = (t1 - t0) * 1000.0
                if paced:  # capture time: grab + retrieve, not the pacing wait
                    read_ms = (t1 - t_grab) * 1000.0
                    t1 = t_grab
                elif period:  # a file paced like a camera: the frame "arrives" at its time
                    t_next = max(t_next + period, t1)
                    wait = t_next - time.perf_counter()
                    if wait > 0 and self._stop.wait(wait):
                        break
                    t1 = time.perf_counter()
                self.frames_read += 1
                if not self._publish(Frame(img, index, t1, read_ms)):
                    break
                index += 1
                continue
            # no frame
            if not self.spec.live:
                if self.loop and self.frames_read:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    failures += 1
                    if failures < 3:
                        continue
                self._finish(None)
                break
            if not self.reconnect:
                self._event("lost", f"source {self.spec.uri!r} lost ({reason})")
                self._finish(f"source lost: {reason}")
                break
            if not self._reopen(reason):
                if not self._stop.is_set():
                    self._finish(f"source {self.spec.uri!r} lost and not reopened")
                break
        with self._cond:
            self._ended = True
            self._cond.notify_all()
        with self._cap_lock:
            cap, self._cap = self._cap, None
            if cap is not None:
                cap.release()
