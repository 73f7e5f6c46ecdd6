"""The stream pipeline: capture -> preprocess -> inference -> postprocess + draw, each on its own thread.

Stages are linked by one-slot hand-offs, so frame ``n+1`` is captured and
preprocessed while frame ``n`` is in inference and frame ``n-1`` is drawn.
Nothing queues up: the preprocessing stage asks the source for a frame only
once inference has taken the previous one, and a live source keeps only its
newest frame, so capture-to-result latency stays flat however long the
stream runs. Timings per frame: see :mod:`.meter`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple

import numpy as np

from ..tasks.classify import get_classes
from ..tasks.common import infer_task, model_labels, per_image, prepare_input, preprocess_spec
from ..tasks.detect import postprocess as detect_postprocess
from ..tasks.segment import segment_outputs
from .draw import draw_results, draw_stats
from .fastpre import FastPreprocess
from .meter import STAGES, StageMeter
from .options import StreamOptions, Task
from .source import Frame, SourceSpec, VideoSource

__all__ = ["Stream", "StreamResult", "guess_task"]


class StreamResult(NamedTuple):
    """One processed frame.

    ``image`` is the frame with results and stats drawn on it (the raw frame
    when drawing is off); ``results`` a tuple of ``Class`` or ``Detection``, or for a
    segmentation stream one ``Segmentation`` (mask at the frame's size, classes by area);
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


def guess_task(model) -> Task:
    """``classify``, ``detect`` or ``segment`` for ``model``: the manifest's task, else its output shapes
    (:func:`edgeship.runtime.tasks.common.infer_task`, as ``edgeship run`` reads them)."""
    task, _why = infer_task(model)
    return {"detection": Task.DETECT, "segmentation": Task.SEGMENT}.get(task, Task.CLASSIFY)


class Stream:
    """A pipelined stream of model results over a video source.

    Args:
        model: an :class:`edgeship.runtime.Model` (or anything with ``run``,
            ``inputs``, ``outputs`` and optionally ``manifest``).
        source: a URI (see :func:`~edgeship.runtime.stream.parse_source`) or a
            :class:`~edgeship.runtime.stream.VideoSource` (not yet started).
        options: a :class:`StreamOptions` (task, top_k, threshold, iou,
            detect_format, interpolation, draw, source); or give its fields as
            keywords (``Stream(model, "0", task="detect")``, and
            ``source_options={...}`` for the source's).
        anchors: ``[A, 4]`` anchors for raw SSD outputs.

    Frames become inputs through the one preprocessing rule (the model's spec
    with ``options.interpolation``), by :class:`FastPreprocess` when it applies.
    Iterate it for :class:`StreamResult` in frame order; it ends when the
    source ends (end of file, or a live source that could not be reopened).

    Raises:
        InputError: a bad option, or a model without an image input or spec.
        SourceError: the source cannot be opened (from :meth:`start`).
    """

    def __init__(self, model, source: str | int | SourceSpec | VideoSource, options: StreamOptions | None = None, *,
                 anchors=None, **fields) -> None:
        self.options = opts = StreamOptions.build(options, **fields)
        self.model = model
        self.task = guess_task(model) if opts.task is Task.AUTO else opts.task
        self.top_k, self.threshold, self.iou = opts.top_k, opts.threshold, opts.iou
        self.detect_format, self.anchors, self.draw = opts.detect_format, anchors, opts.draw
        self.source = source if isinstance(source, VideoSource) else VideoSource(source, opts.source)
        # A model with a dynamic height/width gets its spec from the first frame (frames of one source share a
        # size; a new size makes a new spec), else the model's own spec, fixed for the stream.
        self._dynamic = per_image(model)
        self._specs: dict = {}  # frame (h, w) -> spec, dynamic models only
        self.spec = None if self._dynamic else dataclasses.replace(preprocess_spec(model),
                                                                     interpolation=opts.interpolation)
        self.labels = model_labels(model)
        # to one quantization step, as Model.predict, unless the model was loaded with exact_input=True
        tol = 0 if getattr(model, "exact_input", True) else 1
        self._fast_pre = None if self._dynamic else FastPreprocess.build(model, self.spec, tolerance=tol)
        self.meter = StageMeter()
        self._q_pre = _Handoff()  # preprocess -> inference
        self._q_inf = _Handoff()  # inference -> postprocess/draw
        self._q_out = _Handoff()  # postprocess/draw -> consumer
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._error: BaseException | None = None
        self.ended_by: str | None = None

    @property
    def frames(self) -> int:
        """Results delivered so far."""
        return self.meter.frames

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> "Stream":
        """Open the source and start the stages (idempotent).

        Raises:
            SourceError: the source cannot be opened.
        """
        if self._threads:
            return self
        self.source.start()
        self.meter.start()
        stages = (("preprocess", self._run_pre),
                  ("inference", lambda: self._relay(self._q_pre, self._q_inf, self._infer)),
                  ("postprocess", lambda: self._relay(self._q_inf, self._q_out, self._finish)))
        for name, fn in stages:
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
        """Results in frame order; re-raises the error that stopped a stage."""
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
            if self._dynamic:
                spec = self._frame_spec(frame.image)
            if x is None:
                x = prepare_input(model, spec, frame.image)  # the reference rule
            t1 = time.perf_counter()
            timings = {"capture": frame.capture_ms, "wait": (t0 - frame.t_capture) * 1000.0,
                       "preprocess": (t1 - t0) * 1000.0}
            if not self._q_pre.put((frame, x, timings, spec)):
                return

    def _frame_spec(self, image: np.ndarray):
        """A dynamic-size model's spec for frames of this size (made once per size, the last 8 kept)."""
        hw = tuple(image.shape[:2])
        spec = self._specs.get(hw)
        if spec is None:
            if len(self._specs) >= 8:
                self._specs.pop(next(iter(self._specs)))
            spec = self._specs[hw] = dataclasses.replace(preprocess_spec(self.model, image),
                                                         interpolation=self.options.interpolation)
        return spec

    def _relay(self, q_in: _Handoff, q_out: _Handoff, step: Callable[[tuple], Any]) -> None:
        """Hand ``step(item)`` of every item from ``q_in`` to ``q_out`` until the end marker (forwarded) or stop."""
        while not self._stop.is_set():
            item = q_in.get()
            if item is None:
                continue
            if item is _END:
                q_out.put(_END)
                return
            if not q_out.put(step(item)):
                return

    def _infer(self, item: tuple) -> tuple:
        frame, x, timings, spec = item
        t0 = time.perf_counter()
        outputs = self.model.run(x)
        timings["inference"] = (time.perf_counter() - t0) * 1000.0
        return frame, outputs, timings, spec

    def _postprocess(self, frame: Frame, outputs: Mapping[str, np.ndarray], spec) -> Any:
        img = frame.image
        if self.task is Task.DETECT:
            return detect_postprocess(outputs, (img.shape[1], img.shape[0]), spec=spec,
                                      threshold=self.threshold, iou=self.iou, format=self.detect_format,
                                      anchors=self.anchors, labels=self.labels)
        if self.task is Task.SEGMENT:  # one Segmentation: the mask at the frame's size, classes by area
            return segment_outputs(next(iter(outputs.values())), (img.shape[1], img.shape[0]), spec,
                                   labels=self.labels)
        scores = np.asarray(next(iter(outputs.values())))[0]
        return get_classes(scores, top_k=self.top_k, labels=self.labels)

    def _finish(self, item: tuple) -> StreamResult:
        """Postprocess and draw one frame, and record its timings."""
        frame, outputs, timings, spec = item
        t0 = time.perf_counter()
        results = self._postprocess(frame, outputs, spec)
        t1 = time.perf_counter()
        timings["postprocess"] = (t1 - t0) * 1000.0
        img = frame.image
        if self.draw:
            if not img.flags.writeable:
                img = img.copy()
            draw_results(img, results, self.task)
            draw_stats(img, self.meter.fps(), self.meter.recent_means())
        t2 = time.perf_counter()
        timings["draw"] = (t2 - t1) * 1000.0
        timings["latency"] = (t2 - frame.t_capture) * 1000.0
        self.meter.record(t2, timings)
        return StreamResult(frame.index, img, results, timings, frame.t_capture)

    # -- figures -------------------------------------------------------------------------

    def fps(self) -> float:
        """End-to-end frames per second over the last ~2 seconds."""
        return self.meter.fps()

    def stats(self) -> dict:
        """Live figures (recent means, ms): what the overlay and the web page show."""
        means = self.meter.recent_means()
        return {
            "fps": round(self.meter.fps(), 2),
            "frames": self.meter.frames,
            "dropped": self.source.frames_dropped,
            "reconnects": self.source.reconnects,
            "latency_ms": round(means.get("latency", 0.0), 2),
            "stage_ms": {k: round(means[k], 2) for k in STAGES if k in means},
            "task": self.task.value,
        }

    def summary(self) -> dict:
        """Totals: frames, FPS, per-stage latency statistics (ms), the latency trend, source events."""
        totals = self.meter.totals()
        info = getattr(self.model, "info", None)
        return {
            "source": self.source.spec.uri,
            "source_kind": self.source.spec.kind.value,
            "task": self.task.value,
            "backend": getattr(info, "backend", None),
            "frames": totals["frames"],
            "frames_read": self.source.frames_read,
            "frames_dropped": self.source.frames_dropped,
            "reconnects": self.source.reconnects,
            "elapsed_s": totals["elapsed_s"],
            "fps": totals["fps"],
            "stages_ms": totals["stages_ms"],
            "latency_trend_ms": totals["latency_trend_ms"],
            "events": list(self.source.events),
            "ended_by": self.ended_by,
        }
