"""Camera streams: capture -> preprocess -> inference -> postprocess -> draw, overlapped.

The quickest way in::

    import edgeship.runtime as rt
    from edgeship.runtime.stream import Stream

    with rt.load("artifacts/digits") as model, Stream(model, "0") as stream:
        for r in stream:                        # one StreamResult per processed frame
            print(r.index, r.results, r.timings["latency"])

or the whole thing (display, recording, a summary) in one call::

    summary = run_stream("artifacts/digits", "clip.mp4", display="web", record="out.mp4")

The package, one concern per module:

- :mod:`.options`: :class:`StreamOptions` / :class:`SourceOptions` (frozen, checked once), ``Task``, ``Display``.
- :mod:`.source`: :class:`VideoSource` (a URI in, the newest frame out; its own thread; reconnects).
- :mod:`.fastpre`: :class:`FastPreprocess`, the one preprocessing rule in three OpenCV calls.
- :mod:`.pipeline`: :class:`Stream` (the stages on their threads, one-slot hand-offs).
- :mod:`.meter`: per-stage latency and FPS.
- :mod:`.draw`: results and stats on the frame, the window, the recorder.
- :mod:`.webview`: :class:`WebView`, the MJPEG page for headless boards.
- :mod:`.runner`: :func:`run_stream` and :func:`format_summary`.

Importing this package imports no OpenCV: each function imports it when it runs.
"""

from __future__ import annotations

from ...errors import SourceError, WebViewError
from .draw import Recorder, draw_results, draw_stats, has_gui, resolve_display
from .fastpre import FastPreprocess
from .meter import STAGES, TIMING_KEYS, StageMeter
from .options import Display, SourceOptions, StreamOptions, Task, stream_threads
from .pipeline import Stream, StreamResult, guess_task
from .runner import format_summary, run_stream
from .source import Frame, SourceKind, SourceSpec, VideoSource, csi_pipeline, parse_source
from .webview import WebView

__all__ = [
    "STAGES",
    "TIMING_KEYS",
    "Display",
    "FastPreprocess",
    "Frame",
    "Recorder",
    "SourceError",
    "SourceKind",
    "SourceOptions",
    "SourceSpec",
    "StageMeter",
    "Stream",
    "StreamOptions",
    "StreamResult",
    "Task",
    "VideoSource",
    "WebView",
    "WebViewError",
    "csi_pipeline",
    "draw_results",
    "draw_stats",
    "format_summary",
    "guess_task",
    "has_gui",
    "parse_source",
    "resolve_display",
    "run_stream",
    "stream_threads",
]
