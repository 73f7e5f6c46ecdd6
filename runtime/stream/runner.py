"""``run_stream``: a model over a video source until it ends, shown, recorded and summarised.

::

    summary = run_stream("artifacts/digits", "clip.mp4", display="web", record="out.mp4")
    print(format_summary(summary))
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Mapping

from .draw import Recorder, Window, resolve_display
from .meter import TIMING_KEYS
from .options import Display, StreamOptions, stream_threads
from .pipeline import Stream, StreamResult
from .source import SourceSpec, VideoSource, parse_source

__all__ = ["format_summary", "run_stream"]


def _is_live(source, options: StreamOptions) -> bool:
    """Whether frames arrive in real time (a camera, a URL, a ``realtime`` file)."""
    if isinstance(source, VideoSource):
        return source.spec.live or source.realtime
    if options.source.realtime:
        return True
    try:
        spec = source if isinstance(source, SourceSpec) else parse_source(source)
    except Exception:  # the source is checked (with a proper error) when it is opened
        return False
    return spec.live


def run_stream(model, source, options: StreamOptions | None = None, *,
               on_result: Callable[[StreamResult], Any] | None = None, on_start: Callable[[dict], Any] | None = None,
               log: Callable[[str], Any] | None = None, **fields) -> dict:
    """Run a model over a video source until it ends (or ``duration``/``max_frames``); return a summary.

    Args:
        model: a loaded Model, or a bundle/model path to load (with the options'
            ``artifact``, ``threads``, ``device``, ``delegate``, ``strict``) and close afterwards.
        source: camera index, file, URL or GStreamer pipeline (or a VideoSource).
        options: a :class:`StreamOptions`; or its fields as keywords
            (``display="web"``, ``record="out.mp4"``, ``max_frames=100``,
            ``loop=True``, ``realtime=True``, ``source_options={...}`` ...).
            ``threads=None`` leaves one core to the other stages for a live or
            ``realtime`` source (:func:`stream_threads`); a loaded model keeps
            the threads it was loaded with.
        on_result: called with every :class:`StreamResult` (on the caller's thread).
        on_start: called once with ``{"display": ..., "url": ...}`` when the stream is up.
        log: where progress lines go (default: stderr).

    Returns:
        :meth:`Stream.summary` plus ``display``, ``url``, ``record``, ``recorded_frames``.

    Raises:
        InputError: a bad option.
        SourceError: the source cannot be opened.
        WebViewError: the web view cannot listen on ``host:port``.
    """
    opts = StreamOptions.build(options, **fields)
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    mode, why = resolve_display(opts.display)
    if why:
        say(f"edgeship: {why}")
    own_model = isinstance(model, (str, os.PathLike))
    if own_model:
        from .. import load  # noqa: PLC0415 - the runtime's entry point, above this package

        kw = opts.load_kwargs()
        kw.setdefault("threads", stream_threads(_is_live(source, opts)))
        model = load(os.fspath(model), **kw)
    view = recorder = window = None
    try:
        stream = Stream(model, source, opts)
    except BaseException:
        if own_model:
            model.close()
        raise
    stream.source.on_event = lambda ev: say(f"edgeship: {ev['message']}")
    try:
        if mode is Display.WEB:
            from .webview import WebView  # noqa: PLC0415

            view = WebView(opts.host, opts.port, max_clients=opts.max_clients).start()
            say(f"edgeship: streaming on {view.url}  (Ctrl-C to stop)")
        elif mode is Display.WINDOW:
            window = Window("edgeship")
        stream.start()
        if opts.record:
            recorder = Recorder(opts.record, stream.source.fps)
        if on_start:
            on_start({"display": mode.value, "url": view.url if view else None})
        _deliver(stream, opts, model, recorder, view, window, on_result)
    except KeyboardInterrupt:
        stream.ended_by = "interrupted"
    finally:
        stream.close()
        for closable in (recorder, view, window):
            if closable is not None:
                closable.close()
        if own_model:
            model.close()
    out = stream.summary()
    if stream.ended_by == "max_frames":
        out["frames"] = opts.max_frames  # a frame still in flight when we stopped is not delivered
    out.update({"display": mode.value, "url": view.url if view else None, "record": opts.record,
                "recorded_frames": recorder.frames if recorder else 0})
    if stream.source.error and out["ended_by"] in (None, "end_of_source"):
        out["ended_by"] = "source_lost"
    return out


def _deliver(stream: Stream, opts: StreamOptions, model, recorder, view, window, on_result) -> None:
    """The consumer loop: record, publish or show each result, until the stream or a limit ends it."""
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
        elif window is not None and not window.show(r.image):
            stream.ended_by = "window_closed"
            return
        if on_result is not None:
            on_result(r)
        if opts.max_frames is not None and delivered >= opts.max_frames:
            stream.ended_by = "max_frames"
            return
        if opts.duration is not None and time.perf_counter() - t0 >= opts.duration:
            stream.ended_by = "duration"
            return


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
