"""Camera streams: a pipelined capture -> preprocess -> inference -> postprocess -> draw loop.

The quickest way in::

    import edgeship.runtime as rt
    from edgeship.runtime.stream import Stream

    with rt.load("artifacts/digits") as model, Stream(model, "0") as stream:
        for r in stream:                        # one StreamResult per processed frame
            print(r.index, r.results, r.timings["latency"])

or the whole thing (display, recording, a summary) in one call::

    summary = run_stream("artifacts/digits", "clip.mp4", display="web", record="out.mp4")

Each stage runs on its own thread, linked by one-slot hand-offs, so frame
``n+1`` is captured and preprocessed while frame ``n`` is in inference and
frame ``n-1`` is drawn. Nothing queues up: the preprocessing stage asks the
source for a frame only once inference has taken the previous one, and a
live source keeps only its newest frame, so capture-to-result latency stays
flat however long the stream runs. Every frame carries its own timings
(ms): ``capture``, ``wait`` (captured -> picked up), ``preprocess``,
``inference``, ``postprocess``, ``draw`` and ``latency`` (captured -> drawn).

This module imports OpenCV at module level: it is only imported when streaming.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from enum import Enum
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from edgeship.errors import EdgeshipError, InputError

from . import detect as _detect
from .adapters import get_classes
from .video import Frame, SourceSpec, VideoSource

try:
    import cv2
except ImportError as _exc:  # pragma: no cover
    from edgeship.errors import MissingDependencyError

    raise MissingDependencyError("opencv-python", "camera", "to run camera streams") from _exc

__all__ = ["Display", "FastPreprocess", "Stream", "StreamResult", "Task", "has_gui", "resolve_display", "run_stream",
           "stream_threads"]

STAGES = ("capture", "preprocess", "inference", "postprocess", "draw")
TIMING_KEYS = ("capture", "wait", "preprocess", "inference", "postprocess", "draw", "latency")


class Task(str, Enum):
    AUTO = "auto"
    CLASSIFY = "classify"
    DETECT = "detect"


class Display(str, Enum):
    AUTO = "auto"
    WINDOW = "window"
    WEB = "web"
    NONE = "none"


class StreamResult(NamedTuple):
    """One processed frame.

    ``image`` is the frame with results and stats drawn on it (the raw frame
    when drawing is off); ``results`` a tuple of ``Class`` or ``Detection``;
    ``timings`` milliseconds per stage (see the module docstring).
    """

    index: int
    image: np.ndarray
    results: tuple
    timings: dict
    t_capture: float


_END = object()


class _Handoff:
    """A one-slot hand-off between two pipeline stages."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._full = False
        self.closed = False

    def wait_space(self, timeout: float = 0.5) -> bool:
        with self._cond:
            if self._full and not self.closed:
                self._cond.wait(timeout)
            return not self._full and not self.closed

    def put(self, item) -> bool:
        with self._cond:
            while self._full and not self.closed:
                self._cond.wait(0.5)
            if self.closed:
                return False
            self._item, self._full = item, True
            self._cond.notify_all()
            return True

    def get(self, timeout: float = 0.5):
        with self._cond:
            if not self._full and not self.closed:
                self._cond.wait(timeout)
            if not self._full:
                return None
            item, self._item, self._full = self._item, None, False
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def _stats(values: Sequence[float]) -> dict:
    if not len(values):
        return {"mean": None, "p50": None, "p95": None, "max": None}
    a = np.asarray(values, np.float64)
    return {
        "mean": round(float(a.mean()), 3),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p95": round(float(np.percentile(a, 95)), 3),
        "max": round(float(a.max()), 3),
    }


def has_gui() -> bool:
    """Whether OpenCV can open a window here (built with a GUI backend, and a display to show it on)."""
    info = cv2.getBuildInformation()
    i = info.find("GUI:")
    if i >= 0 and info[i : i + 60].split(":", 1)[1].strip().upper().startswith("NONE"):
        return False
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("edgeship-probe", cv2.WINDOW_AUTOSIZE)
        cv2.destroyWindow("edgeship-probe")
    except cv2.error:
        return False
    return True


def resolve_display(display: str | Display) -> tuple[Display, str | None]:
    """The display to use and, when it differs from the request, why.

    ``auto`` is a window when OpenCV has a GUI and a display, else the web
    page; ``window`` without a GUI falls back to the web page.
    """
    try:
        d = Display(display)
    except ValueError:
        raise InputError(f"--display {display!r} is unknown; expected auto, window, web or none") from None
    if d in (Display.AUTO, Display.WINDOW):
        if has_gui():
            return Display.WINDOW, None
        why = "OpenCV here has no GUI (opencv-python-headless) or there is no display"
        return Display.WEB, (f"{why}; serving the stream as a web page instead" if d is Display.WINDOW else None)
    return d, None


def _guess_task(model) -> Task:
    man = getattr(model, "manifest", None) or {}
    t = str(man.get("task") or "").lower() if isinstance(man, Mapping) else ""
    if t.startswith("detect") or t in ("object_detection", "objects"):
        return Task.DETECT
    if t.startswith("classif"):
        return Task.CLASSIFY
    outs = getattr(model, "outputs", ()) or ()
    if len(outs) >= 2:
        return Task.DETECT
    if len(outs) == 1:
        shape = tuple(outs[0].shape)
        if len(shape) == 3 and shape[-1] is not None and shape[1] is not None and min(shape[1], shape[2]) >= 5:
            return Task.DETECT
    return Task.CLASSIFY


# ------------------------------------------------------------------------------ preprocessing


def stream_threads(live: bool = True) -> int:
    """Inference threads a stream uses by default.

    On a machine with few cores, inference on every core starves capture,
    preprocessing and drawing (they run on their own threads, in parallel with
    inference): for a live (or realtime-paced) source the stream leaves one
    core to them, ``min(4, cores - 1)`` (at least 1). Other sources (a file
    read as fast as it decodes) get the runtime's default, ``min(4, cores)``.
    Pass ``threads=`` to :func:`run_stream` (``--threads``) to choose yourself.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(4, n - 1 if live else n))


class FastPreprocess:
    """Frame -> model input in two OpenCV calls: a resize straight to the model size, then a lookup table.

    For the common case (stretch resize, 3-channel RGB/BGR, NHWC, one image
    input) every per-pixel step after the resize -- colour order, ``* scale``,
    ``- mean``, ``/ std`` and, for a quantized input, the model's own
    quantization (``round(x / s) + zp``, clipped) -- is a function of the
    8-bit pixel value and the channel, so it is folded into one 256-entry
    table per channel (``cv2.LUT``): no float image, no extra copies. The
    colour swap happens on the small resized image. The result is what
    :func:`edgeship.runtime.detect.prepare_input` followed by ``Model.run``'s
    quantization gives, bit for bit with ``interpolation="area"``;
    ``"linear"`` (the default) resizes with ``INTER_LINEAR``, about 10x
    cheaper than ``INTER_AREA`` for a 640x480 -> 224x224 frame, as most camera
    pipelines do. ``build`` returns None when the fast path does not apply.
    """

    def __init__(self, size, table: np.ndarray, swap: bool, interp: int) -> None:
        self.h, self.w = int(size[0]), int(size[1])
        self.table, self.swap, self.interp = table, swap, interp

    @classmethod
    def build(cls, model, spec, interpolation: str = "linear") -> "FastPreprocess | None":
        from ..preprocess import ColorOrder, Layout, ResizeMode  # noqa: PLC0415

        if interpolation not in ("linear", "area"):
            raise InputError(f"interpolation {interpolation!r} is unknown; expected linear or area")
        try:
            inputs = tuple(getattr(model, "inputs", ()) or ())
            if len(inputs) != 1 or spec.resize is not ResizeMode.STRETCH or spec.color is ColorOrder.GRAY:
                return None
            man = getattr(model, "manifest", None) or {}
            layout = ((man.get("source") or {}).get("layout") if isinstance(man, Mapping) else None)
            if spec.layout is not Layout.NHWC or (layout and layout != "NHWC"):
                return None
            shape = tuple(inputs[0].shape)
            if len(shape) != 4 or tuple(shape[1:]) != (spec.size[0], spec.size[1], 3):
                return None
            mean = np.broadcast_to(np.asarray(spec.mean, np.float32), (3,))
            std = np.broadcast_to(np.asarray(spec.std, np.float32), (3,))
            px = np.arange(256, dtype=np.float32)[:, None] * np.float32(spec.scale)
            x = (px - mean) / std  # (256, 3), as PreprocessSpec.apply computes it
            if spec.dtype in ("uint8", "int8"):
                info = np.iinfo(spec.dtype)
                x = np.clip(np.rint(x), info.min, info.max).astype(spec.dtype).astype(np.float32)
            dtype = np.dtype(inputs[0].dtype)
            q = inputs[0].quantization
            if dtype.kind in "iu" and q is not None and len(q.scale) == 1:
                qs, zp = np.float32(q.scale[0]), np.float32((q.zero_point or (0,))[0])
                info = np.iinfo(dtype)
                x = np.divide(x, qs, dtype=np.float32)
                np.rint(x, out=x)
                if zp:
                    x += zp
                table = np.clip(x, info.min, info.max).astype(dtype)
            elif dtype == np.float32:
                table = x.astype(np.float32)
            else:
                return None
        except Exception:  # an unusual model: the generic path handles it
            return None
        swap = spec.color is ColorOrder.RGB  # frames are BGR
        interp = cv2.INTER_LINEAR if interpolation == "linear" else cv2.INTER_AREA
        return cls(spec.size, np.ascontiguousarray(table.reshape(256, 1, 3)), swap, interp)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        img = image
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            return None
        ih, iw = img.shape[:2]
        if (ih, iw) != (self.h, self.w):
            interp = self.interp if (ih > self.h or iw > self.w) else cv2.INTER_LINEAR
            img = cv2.resize(img, (self.w, self.h), interpolation=interp)
        if self.swap:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return cv2.LUT(img, self.table)[None]


# ------------------------------------------------------------------------------ drawing

_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
            (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203)]


def _color(i: int) -> tuple:
    return _PALETTE[int(i) % len(_PALETTE)]


def _text(img, text, org, scale, color=(255, 255, 255), bg=(0, 0, 0), thickness=1) -> int:
    """Text with a filled background; returns the height used."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = org
    cv2.rectangle(img, (x, y - th - 3), (x + tw + 4, y + base + 1), bg, cv2.FILLED)
    cv2.putText(img, text, (x + 2, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
    return th + base + 4


def draw_results(img: np.ndarray, results: tuple, task: Task) -> None:
    """Draw classes (top-left) or boxes on ``img`` in place."""
    h, w = img.shape[:2]
    scale = max(0.4, min(1.0, w / 900))
    if task is Task.DETECT:
        thick = max(1, round(w / 400))
        for d in results:
            b = d.bbox
            p1, p2 = (int(b.xmin), int(b.ymin)), (int(b.xmax), int(b.ymax))
            cv2.rectangle(img, p1, p2, _color(d.id), thick, cv2.LINE_AA)
            name = d.label if d.label is not None else str(d.id)
            _text(img, f"{name} {d.score:.2f}", (p1[0], max(p1[1] - 2, 14)), scale * 0.8, bg=_color(d.id))
    else:
        y = int(22 * scale) + 4
        for c in results:
            name = c.label if c.label is not None else f"class {c.id}"
            y += _text(img, f"{name}: {c.score:.2f}", (6, y), scale, color=(255, 255, 255), bg=(40, 40, 40))


def draw_stats(img: np.ndarray, fps: float, timings: Mapping[str, float]) -> None:
    """One line of FPS and stage times along the bottom of ``img``."""
    h, w = img.shape[:2]
    scale = max(0.35, min(0.6, w / 1100))
    parts = [f"{fps:5.1f} FPS"] + [f"{k[:4]} {timings[k]:.1f}" for k in ("capture", "preprocess", "inference",
                                                                         "postprocess", "draw") if k in timings]
    if "latency" in timings:
        parts.append(f"lat {timings['latency']:.0f} ms")
    _text(img, " | ".join(parts), (4, h - 6), scale, color=(120, 255, 120), bg=(0, 0, 0))


# ------------------------------------------------------------------------------ the pipeline


class Stream:
    """A pipelined stream of model results over a video source.

    Args:
        model: an :class:`edgeship.runtime.Model` (or anything with ``run``,
            ``inputs``, ``outputs`` and optionally ``manifest``).
        source: a URI (see :func:`edgeship.runtime.video.parse_source`) or a
            :class:`~edgeship.runtime.video.VideoSource` (not yet started).
        task: ``auto`` (from the manifest or the output shapes), ``classify``
            or ``detect``.
        top_k: classes to keep per frame (classification).
        threshold: minimum score (detections; classes below it are not drawn).
        iou: NMS overlap threshold (detection).
        detect_format: output layout for detection (see :mod:`edgeship.runtime.detect`).
        anchors: anchors for raw SSD outputs.
        draw: draw results and stats on the frame (off: ``image`` is the raw frame).
        source_options: keyword arguments for :class:`VideoSource` (``loop``,
            ``realtime``, ``drop``, timeouts, backoff, ...).
        interpolation: how frames are resized to the model size: ``linear``
            (default, ``INTER_LINEAR``: cheap) or ``area`` (``INTER_AREA``, as
            ``Model.predict`` does: the same input bit for bit, slower). See
            :class:`FastPreprocess`.

    Iterate it for :class:`StreamResult` in frame order; it ends when the
    source ends (end of file, or a live source that could not be reopened).

    Raises:
        SourceError: the source cannot be opened (from :meth:`start`).
        InputError: the task or the model's outputs do not fit.
    """

    def __init__(self, model, source: str | int | SourceSpec | VideoSource, *, task: str | Task = Task.AUTO,
                 top_k: int = 3, threshold: float = 0.5, iou: float = 0.45, detect_format: str = "auto",
                 anchors=None, draw: bool = True, source_options: dict | None = None,
                 interpolation: str = "linear") -> None:
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold must be in [0, 1], got {threshold}")
        try:
            task = Task(task)
        except ValueError:
            raise InputError(f"task {task!r} is unknown; expected auto, classify or detect") from None
        self.model = model
        self.task = _guess_task(model) if task is Task.AUTO else task
        self.top_k, self.threshold, self.iou = int(top_k), float(threshold), float(iou)
        self.detect_format, self.anchors = detect_format, anchors
        self.draw = bool(draw)
        self.source = source if isinstance(source, VideoSource) else VideoSource(source, **(source_options or {}))
        self.spec = _detect.preprocess_spec(model)
        self.labels = _detect.model_labels(model)
        self._fast_pre = FastPreprocess.build(model, self.spec, interpolation)
        self._q_pre = _Handoff()  # preprocess -> inference
        self._q_inf = _Handoff()  # inference -> postprocess/draw
        self._q_out = _Handoff()  # postprocess/draw -> consumer
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._done_times: deque = deque(maxlen=120)
        self._recent: dict = {k: deque(maxlen=30) for k in TIMING_KEYS}
        self._all: dict = {k: [] for k in TIMING_KEYS}
        self._trend: list = []  # (t since start, latency ms)
        self.frames = 0
        self.t_start: float | None = None
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.ended_by: str | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> "Stream":
        if self._threads:
            return self
        self.source.start()
        self.t_start = time.perf_counter()
        for name, fn in (("preprocess", self._run_pre), ("inference", self._run_inf), ("postprocess", self._run_post)):
            t = threading.Thread(target=self._guard(fn), name=f"edgeship-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def close(self) -> None:
        """Stop every stage and release the source (idempotent)."""
        self._stop.set()
        for q in (self._q_pre, self._q_inf, self._q_out):
            q.close()
        for t in self._threads:
            t.join(timeout=5.0)
        self.source.close()

    def __enter__(self) -> "Stream":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[StreamResult]:
        self.start()
        while True:
            item = self._q_out.get(timeout=0.5)
            if item is None:
                if self._stop.is_set() or self._q_out.closed:
                    break
                continue
            if item is _END:
                break
            yield item
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        if self.ended_by is None:
            self.ended_by = "source_lost" if self.source.error else "end_of_source"

    # -- stages --------------------------------------------------------------------------

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run():
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                self._error = exc
                self._q_out.close()
                self._stop.set()

        return run

    def _run_pre(self) -> None:
        src, model, spec, fast = self.source, self.model, self.spec, self._fast_pre
        while not self._stop.is_set():
            if not self._q_pre.wait_space():  # pick up a frame only when inference can take it soon
                continue
            frame: Frame | None = src.read(timeout=0.5)
            if frame is None:
                if src.ended:
                    self._q_pre.put(_END)
                    return
                continue
            t0 = time.perf_counter()
            x = fast(frame.image) if fast is not None else None
            if x is None:
                x = _detect.prepare_input(model, spec, frame.image)
            t1 = time.perf_counter()
            timings = {"capture": frame.capture_ms, "wait": (t0 - frame.t_capture) * 1000.0,
                       "preprocess": (t1 - t0) * 1000.0}
            if not self._q_pre.put((frame, x, timings)):
                return

    def _run_inf(self) -> None:
        run = self.model.run
        while not self._stop.is_set():
            item = self._q_pre.get()
            if item is None:
                continue
            if item is _END:
                self._q_inf.put(_END)
                return
            frame, x, timings = item
            t0 = time.perf_counter()
            outputs = run(x)
            timings["inference"] = (time.perf_counter() - t0) * 1000.0
            if not self._q_inf.put((frame, outputs, timings)):
                return

    def _postprocess(self, frame: Frame, outputs: Mapping[str, np.ndarray]) -> tuple:
        if self.task is Task.DETECT:
            img = frame.image
            return _detect.postprocess(outputs, (img.shape[1], img.shape[0]), spec=self.spec,
                                       threshold=self.threshold, iou=self.iou, format=self.detect_format,
                                       anchors=self.anchors, labels=self.labels)
        scores = np.asarray(next(iter(outputs.values())))[0]
        return get_classes(scores, top_k=self.top_k, labels=self.labels)

    def _run_post(self) -> None:
        while not self._stop.is_set():
            item = self._q_inf.get()
            if item is None:
                continue
            if item is _END:
                self._q_out.put(_END)
                return
            frame, outputs, timings = item
            t0 = time.perf_counter()
            results = self._postprocess(frame, outputs)
            t1 = time.perf_counter()
            timings["postprocess"] = (t1 - t0) * 1000.0
            img = frame.image
            if self.draw:
                if not img.flags.writeable:
                    img = img.copy()
                draw_results(img, results, self.task)
                draw_stats(img, self.fps(), self._recent_means())
            t2 = time.perf_counter()
            timings["draw"] = (t2 - t1) * 1000.0
            timings["latency"] = (t2 - frame.t_capture) * 1000.0
            self._record(t2, timings)
            if not self._q_out.put(StreamResult(frame.index, img, results, timings, frame.t_capture)):
                return

    # -- measurements ----------------------------------------------------------------------

    def _record(self, t_done: float, timings: dict) -> None:
        with self._lock:
            self.frames += 1
            if self.t_first is None:
                self.t_first = t_done
            self.t_last = t_done
            self._done_times.append(t_done)
            for k in TIMING_KEYS:
                v = timings.get(k)
                if v is not None:
                    self._recent[k].append(v)
                    if len(self._all[k]) < 2_000_000:
                        self._all[k].append(v)
            self._trend.append((t_done - (self.t_start or t_done), timings["latency"]))

    def _recent_means(self) -> dict:
        with self._lock:
            return {k: float(np.mean(v)) for k, v in self._recent.items() if v}

    def fps(self) -> float:
        """End-to-end frames per second over the last ~2 seconds."""
        with self._lock:
            times = [t for t in self._done_times if t >= self._done_times[-1] - 2.0] if self._done_times else []
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    def stats(self) -> dict:
        """Live figures (recent means, ms): what the overlay and the web page show."""
        means = self._recent_means()
        return {
            "fps": round(self.fps(), 2),
            "frames": self.frames,
            "dropped": self.source.frames_dropped,
            "reconnects": self.source.reconnects,
            "latency_ms": round(means.get("latency", 0.0), 2),
            "stage_ms": {k: round(means[k], 2) for k in STAGES if k in means},
            "task": self.task.value,
        }

    def summary(self) -> dict:
        """Totals: frames, FPS, per-stage latency statistics (ms), the latency trend, source events."""
        with self._lock:
            n = self.frames
            span = (self.t_last - self.t_first) if n > 1 else 0.0
            per_stage = {k: _stats(self._all[k]) for k in TIMING_KEYS}
            trend = list(self._trend)
        elapsed = (self.t_last or time.perf_counter()) - (self.t_start or time.perf_counter())
        info = getattr(self.model, "info", None)
        return {
            "source": self.source.spec.uri,
            "source_kind": self.source.spec.kind.value,
            "task": self.task.value,
            "backend": getattr(info, "backend", None),
            "frames": n,
            "frames_read": self.source.frames_read,
            "frames_dropped": self.source.frames_dropped,
            "reconnects": self.source.reconnects,
            "elapsed_s": round(elapsed, 3),
            "fps": round((n - 1) / span, 2) if span > 0 else 0.0,
            "stages_ms": per_stage,
            "latency_trend_ms": _trend_windows(trend),
            "events": list(self.source.events),
            "ended_by": self.ended_by,
        }


def _trend_windows(trend: list, windows: int = 6) -> list:
    """Mean capture-to-result latency in ``windows`` equal slices of the run (flat = no growing queue)."""
    if not trend:
        return []
    end = trend[-1][0]
    start = trend[0][0]
    width = max((end - start) / windows, 1e-9)
    buckets: list[list] = [[] for _ in range(windows)]
    for t, lat in trend:
        buckets[min(windows - 1, int((t - start) / width))].append(lat)
    return [{"t_s": round(start + (i + 0.5) * width, 2), "latency_ms": round(float(np.mean(b)), 2), "frames": len(b)}
            for i, b in enumerate(buckets) if b]


# ------------------------------------------------------------------------------ run_stream


class _Recorder:
    def __init__(self, path: str, fps: float) -> None:
        self.path, self.fps = path, fps if fps and fps > 0 else 30.0
        self._w = None
        self.frames = 0

    def write(self, img: np.ndarray) -> None:
        if self._w is None:
            ext = os.path.splitext(self.path)[1].lower()
            fourcc = cv2.VideoWriter_fourcc(*("MJPG" if ext == ".avi" else "mp4v"))
            h, w = img.shape[:2]
            self._w = cv2.VideoWriter(self.path, fourcc, self.fps, (w, h))
            if not self._w.isOpened():
                self._w = None
                raise EdgeshipError(f"cannot record to {self.path!r}: OpenCV could not open a video writer there "
                                    "(use a .mp4 or .avi path in a writable folder)")
        self._w.write(img)
        self.frames += 1

    def close(self) -> None:
        if self._w is not None:
            self._w.release()
            self._w = None


def _is_live(source) -> bool:
    try:
        from .video import parse_source  # noqa: PLC0415

        spec = source if isinstance(source, SourceSpec) else parse_source(source)
    except Exception:  # the source is checked (with a proper error) when it is opened
        return False
    return spec.live


def run_stream(model, source, *, display: str | Display = Display.NONE, host: str = "127.0.0.1", port: int = 8080,
               record: str | None = None, duration: float | None = None, max_frames: int | None = None,
               task: str | Task = Task.AUTO, top_k: int = 3, threshold: float = 0.5, iou: float = 0.45,
               loop: bool = False, realtime: bool = False, max_clients: int = 4, threads: int | None = None,
               artifact: str | None = None, source_options: dict | None = None, interpolation: str = "linear",
               on_result: Callable[[StreamResult], Any] | None = None, on_start: Callable[[dict], Any] | None = None,
               log: Callable[[str], Any] | None = None) -> dict:
    """Run a model over a video source until it ends (or ``duration``/``max_frames``); return a summary.

    Args:
        model: a loaded Model, or a bundle/model path to load (and close afterwards).
        source: camera index, file, URL or GStreamer pipeline.
        display: ``auto`` (window with a GUI, else web), ``window``, ``web``
            (MJPEG page on ``host:port``) or ``none`` (for measuring).
        record: write the annotated stream to this ``.mp4``/``.avi`` file.
        duration: stop after this many seconds; ``max_frames``: after this many results.
        loop: replay a file from its start when it ends; ``realtime``: pace a
            file at its frame rate, like a camera.
        threads: inference threads when ``model`` is a path. Default: one
            core left to the other stages for a live or ``realtime`` source on
            a small machine (see :func:`stream_threads`), else the runtime's default.
            A loaded model keeps the threads it was loaded with.
        interpolation: ``linear`` (default) or ``area`` (see :class:`Stream`).
        on_result: called with every :class:`StreamResult` (on the caller's thread).
        on_start: called once with ``{"display": ..., "url": ...}`` when the stream is up.
        log: where progress lines go (default: stderr).

    Returns:
        :meth:`Stream.summary` plus ``display``, ``url``, ``record``.

    Raises:
        SourceError: the source cannot be opened.
        WebViewError: the web view cannot listen on ``host:port``.
        InputError: a bad argument.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if duration is not None and duration <= 0:
        raise InputError(f"duration must be > 0 seconds, got {duration}")
    if max_frames is not None and max_frames < 1:
        raise InputError(f"max_frames must be >= 1, got {max_frames}")
    mode, why = resolve_display(display)
    if why:
        say(f"edgeship: {why}")
    own_model = isinstance(model, (str, os.PathLike))
    if own_model:
        from . import load  # noqa: PLC0415

        if threads is None:  # leave a core to capture/preprocess/draw when frames arrive in real time
            src = source if isinstance(source, VideoSource) else None
            live = (src.spec.live or src.realtime) if src is not None else (
                realtime or bool((source_options or {}).get("realtime")) or _is_live(source))
            threads = stream_threads(live)
        model = load(os.fspath(model), artifact=artifact, threads=threads)
    opts = dict(source_options or {})
    opts.setdefault("loop", loop)
    opts.setdefault("realtime", realtime)
    view = recorder = None
    stream = Stream(model, source, task=task, top_k=top_k, threshold=threshold, iou=iou, source_options=opts,
                    interpolation=interpolation)
    stream.source.on_event = lambda ev: say(f"edgeship: {ev['message']}")
    window = "edgeship"
    try:
        if mode is Display.WEB:
            from .webview import WebView  # noqa: PLC0415

            view = WebView(host, port, max_clients=max_clients).start()
            say(f"edgeship: streaming on {view.url}  (Ctrl-C to stop)")
        stream.start()
        if record:
            recorder = _Recorder(record, stream.source.fps)
        if on_start:
            on_start({"display": mode.value, "url": view.url if view else None})
        t0 = time.perf_counter()
        t_stats = 0.0
        base = {"source": stream.source.spec.uri, "model": os.path.basename(str(getattr(model, "path", "") or "")),
                "backend": getattr(getattr(model, "info", None), "backend", None)}
        base = {k: v for k, v in base.items() if v}
        delivered = 0
        for r in stream:
            delivered += 1
            if recorder is not None:
                recorder.write(r.image)
            if view is not None:
                view.publish(r.image)
                now = time.perf_counter()
                if now - t_stats > 0.25:
                    view.set_stats({**stream.stats(), **base})
                    t_stats = now
            elif mode is Display.WINDOW:
                cv2.imshow(window, r.image)
                if (cv2.waitKey(1) & 0xFF) in (27, ord("q")):
                    stream.ended_by = "window_closed"
                    break
            if on_result is not None:
                on_result(r)
            if max_frames is not None and delivered >= max_frames:
                stream.ended_by = "max_frames"
                break
            if duration is not None and time.perf_counter() - t0 >= duration:
                stream.ended_by = "duration"
                break
    except KeyboardInterrupt:
        stream.ended_by = "interrupted"
    finally:
        stream.close()
        if recorder is not None:
            recorder.close()
        if view is not None:
            view.close()
        if mode is Display.WINDOW:
            try:
                cv2.destroyWindow(window)
            except cv2.error:
                pass
        if own_model:
            model.close()
    out = stream.summary()
    if stream.ended_by == "max_frames":
        out["frames"] = max_frames  # a frame still in flight when we stopped is not delivered
    out.update({"display": mode.value, "url": view.url if view else None, "record": record,
                "recorded_frames": recorder.frames if recorder else 0})
    if stream.source.error and out["ended_by"] in (None, "end_of_source"):
        out["ended_by"] = "source_lost"
    return out


def format_summary(s: Mapping) -> str:
    """A short human-readable table of a :func:`run_stream` summary."""
    lines = [f"{s['frames']} frames from {s['source']} in {s['elapsed_s']:.1f} s: {s['fps']:.1f} FPS end to end "
             f"({s['task']}, {s.get('backend') or '?'}; ended by {s.get('ended_by')})"]
    if s.get("frames_dropped"):
        lines.append(f"source frames skipped (newest-frame policy): {s['frames_dropped']}")
    if s.get("reconnects"):
        lines.append(f"source reconnects: {s['reconnects']}")
    lines.append(f"{'stage':<12}{'mean':>9}{'p50':>9}{'p95':>9}{'max':>9}  (ms)")
    for k in TIMING_KEYS:
        st = s["stages_ms"].get(k) or {}
        if st.get("mean") is None:
            continue
        lines.append(f"{k:<12}" + "".join(f"{st[m]:>9.2f}" for m in ("mean", "p50", "p95", "max")))
    trend = s.get("latency_trend_ms") or []
    if len(trend) > 1:
        lines.append("latency over the run: " + "  ".join(f"{w['latency_ms']:.0f}" for w in trend) + " ms")
    if s.get("record"):
        lines.append(f"recorded {s.get('recorded_frames', 0)} frames to {s['record']}")
    return "\n".join(lines)


__all__ += ["draw_results", "draw_stats", "format_summary"]
