"""What a stream is asked to do, as frozen values: :class:`StreamOptions` and :class:`SourceOptions`.

mediapipe-style options, made frozen: every choice is an enum or a number
checked once, in ``__post_init__``, before any thread starts::

    opts = StreamOptions(task=Task.DETECT, threshold=0.4, display=Display.WEB, port=0, max_frames=100)
    summary = run_stream("artifacts/detector", "0", opts)

Keyword arguments of :func:`~edgeship.runtime.stream.run_stream` and
:class:`~edgeship.runtime.stream.Stream` are the same field names
(:meth:`StreamOptions.build` merges them).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Mapping

from ...errors import InputError
from ...preprocess import Interpolation
from ...vocab import parse

__all__ = ["Display", "SourceOptions", "StreamOptions", "Task", "stream_threads"]


class Task(str, Enum):
    """What a stream does with each frame (``auto``: from the manifest's task or the output shapes).

    ``StreamOptions(task=...)`` also takes the vocabulary's names
    (``edgeship.vocab.Task.CLASSIFICATION``/``DETECTION``, ``"classification"``/``"detection"``).
    """

    AUTO = "auto"
    CLASSIFY = "classify"
    DETECT = "detect"
    SEGMENT = "segment"


# the vocabulary's task names (edgeship.vocab.Task, the manifest's "task") mean the same here
_TASK_NAMES = {"classification": "classify", "detection": "detect", "segmentation": "segment"}


class Display(str, Enum):
    """Where the annotated frames go: a window, an MJPEG web page, or nowhere (measuring)."""

    AUTO = "auto"
    WINDOW = "window"
    WEB = "web"
    NONE = "none"


@dataclass(frozen=True)
class SourceOptions:
    """How a :class:`~edgeship.runtime.stream.VideoSource` reads its URI.

    Attributes:
        open_timeout, read_timeout: seconds, applied to network sources by OpenCV.
        drop: keep only the newest frame (``None``: True for live sources and
            ``realtime`` files, False for other files, read frame by frame).
        realtime: pace a file at its frame rate, as a camera would deliver it.
        loop: restart a file at its end instead of ending.
        reconnect: reopen a lost live source (``None``: True for live sources).
        max_retries: give up after this many failed reopen attempts in a row (``None``: never).
        backoff: (first, maximum) delay in seconds between reopen attempts; doubles after each failure.
        width, height, fps: requested capture properties (cameras).
        opener: ``opener(spec, open_timeout, read_timeout)`` returning a capture-like
            object (``isOpened``, ``read``, ``get``, ``release``); default OpenCV.
    """

    open_timeout: float = 10.0
    read_timeout: float = 5.0
    drop: bool | None = None
    realtime: bool = False
    loop: bool = False
    reconnect: bool | None = None
    max_retries: int | None = None
    backoff: tuple[float, float] = (0.5, 8.0)
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    opener: Callable | None = None

    def __post_init__(self) -> None:
        if self.open_timeout <= 0 or self.read_timeout <= 0:
            raise InputError(f"source timeouts must be > 0 seconds, got open_timeout={self.open_timeout}, "
                             f"read_timeout={self.read_timeout}")
        b = tuple(float(v) for v in self.backoff)
        if len(b) != 2 or b[0] <= 0 or b[1] < b[0]:
            raise InputError(f"backoff must be (first, maximum) seconds with 0 < first <= maximum, got {self.backoff}")
        object.__setattr__(self, "backoff", b)
        if self.max_retries is not None and self.max_retries < 1:
            raise InputError(f"max_retries must be >= 1 (or None: never give up), got {self.max_retries}")

    @classmethod
    def of(cls, value: "SourceOptions | Mapping | None", **defaults) -> "SourceOptions":
        """``value`` as options: a SourceOptions, or a dict of its fields (over ``defaults``).

        Raises:
            InputError: an unknown key.
        """
        if isinstance(value, SourceOptions):
            return value
        d = {**defaults, **dict(value or {})}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"source_options has unknown keys {unknown}; expected some of {sorted(names)}")
        return cls(**d)


@dataclass(frozen=True)
class StreamOptions:
    """Everything a stream can be asked, checked once.

    Attributes:
        task: ``auto`` (the manifest's task, else the output shapes), ``classify``, ``detect`` or
            ``segment`` (or ``edgeship.vocab.Task.CLASSIFICATION``/``DETECTION``/``SEGMENTATION``).
        top_k: classes kept per frame (classification).
        threshold: minimum score, in [0, 1] (detections; classes below it are not drawn).
        iou: NMS overlap threshold, in [0, 1] (detection).
        detect_format: output layout for detection (``auto``, ``ssd``, ``ssd_raw``, ``yolo``, ...).
        interpolation: how frames are resized to the model size: ``linear`` (default,
            cheap) or ``area`` (what ``Model.predict`` does by default). Both are the
            one preprocessing rule with that interpolation (see ``FastPreprocess``).
        draw: draw results and stats on the frame (off: ``image`` is the raw frame).
        display: ``auto`` (a window with a GUI, else the web page), ``window``,
            ``web`` (MJPEG page on ``host:port``) or ``none``.
        host, port, max_clients: the web page's address and how many viewers it serves.
        record: also write the annotated stream to this ``.mp4``/``.avi`` file.
        duration: stop after this many seconds; max_frames: after this many results.
        source: how the source is read (:class:`SourceOptions`).
        artifact, threads, device, delegate, strict, backend: how a model given as a
            path is loaded (``edgeship.runtime.load``'s keywords). ``threads=None``
            leaves one core to the other stages for a live source (:func:`stream_threads`).
    """

    task: Task = Task.AUTO
    top_k: int = 3
    threshold: float = 0.5
    iou: float = 0.45
    detect_format: str = "auto"
    interpolation: Interpolation = Interpolation.LINEAR
    draw: bool = True
    display: Display = Display.NONE
    host: str = "127.0.0.1"
    port: int = 8080
    max_clients: int = 4
    record: str | None = None
    duration: float | None = None
    max_frames: int | None = None
    source: SourceOptions = field(default_factory=SourceOptions)
    artifact: str | None = None
    threads: int | None = None
    device: str | None = None
    delegate: Any = None
    strict: bool = False
    backend: str | None = None

    def __post_init__(self) -> None:
        task = self.task.value if isinstance(self.task, Enum) else self.task
        object.__setattr__(self, "task", parse(Task, _TASK_NAMES.get(task, task), "task"))
        object.__setattr__(self, "display", parse(Display, self.display, "display"))
        object.__setattr__(self, "interpolation", parse(Interpolation, self.interpolation, "interpolation"))
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise InputError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        for name in ("threshold", "iou"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= float(v) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {v!r}")
        if self.duration is not None and not self.duration > 0:
            raise InputError(f"duration must be > 0 seconds, got {self.duration}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"max_frames must be >= 1, got {self.max_frames}")
        if not 0 <= int(self.port) <= 65535:
            raise InputError(f"port must be in 0..65535, got {self.port}")
        if self.max_clients < 1:
            raise InputError(f"max_clients must be >= 1, got {self.max_clients}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"threads must be >= 1, got {self.threads}")
        if not isinstance(self.source, SourceOptions):
            object.__setattr__(self, "source", SourceOptions.of(self.source))

    @classmethod
    def build(cls, options: "StreamOptions | None" = None, *, loop: bool | None = None, realtime: bool | None = None,
              source_options: "SourceOptions | Mapping | None" = None, **fields) -> "StreamOptions":
        """``options`` (or the defaults) with ``fields`` replaced.

        ``loop``/``realtime`` and ``source_options`` (a dict of
        :class:`SourceOptions` fields) go into ``source``.

        Raises:
            InputError: an unknown field or a bad value.
        """
        base = options if options is not None else cls()
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise InputError(f"unknown stream option(s) {unknown}; expected some of {sorted(names)}")
        src = base.source
        if source_options is not None:
            src = SourceOptions.of(source_options, **{f.name: getattr(src, f.name) for f in dataclasses.fields(src)})
        extra = {k: v for k, v in (("loop", loop), ("realtime", realtime)) if v is not None}
        if extra:
            # an explicit source_options entry wins over the loop=/realtime= shortcuts
            given = dict(source_options) if isinstance(source_options, Mapping) else {}
            src = dataclasses.replace(src, **{k: v for k, v in extra.items() if k not in given})
        return dataclasses.replace(base, source=src, **fields)

    def load_kwargs(self) -> dict:
        """The ``edgeship.runtime.load`` keywords these options set (only those given)."""
        kw = {"artifact": self.artifact, "threads": self.threads, "device": self.device, "delegate": self.delegate,
              "backend": self.backend}
        kw = {k: v for k, v in kw.items() if v is not None}
        if self.strict:
            kw["strict"] = True
        return kw


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
