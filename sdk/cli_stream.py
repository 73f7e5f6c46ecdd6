"""``edgeship stream``: run a bundle on a camera, video file, URL or GStreamer pipeline.

Registered by :mod:`edgeship.cli` with ``add_stream_parser(sub)``. Follows the
CLI's conventions: a user's mistake is an ``EdgeshipError`` (exit 2, one line
on stderr), ``--json`` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import os
import sys

from .errors import EdgeshipError, InputError

DISPLAYS = ("auto", "window", "web", "none")
TASKS = ("auto", "classify", "detect")


def cmd_stream(args) -> int:
    from .cli import UsageError, _emit_json, _stdout_to_stderr

    if not os.path.exists(args.path):
        raise InputError(f"model {args.path!r} does not exist")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be > 0 seconds, got {args.duration}")
    if args.max_frames is not None and args.max_frames < 1:
        raise UsageError(f"--max-frames must be >= 1, got {args.max_frames}")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {args.threshold}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    if args.record:
        folder = os.path.dirname(os.path.abspath(args.record))
        if not os.path.isdir(folder):
            raise UsageError(f"--record {args.record!r}: folder {folder!r} does not exist")
        if os.path.splitext(args.record)[1].lower() not in (".mp4", ".avi", ".mov", ".m4v", ".mkv"):
            raise UsageError(f"--record {args.record!r}: use a .mp4 or .avi file name")
    try:
        from edgeship.runtime.stream import format_summary, run_stream  # noqa: PLC0415 - needs OpenCV
    except ImportError as exc:
        if isinstance(exc, EdgeshipError):
            raise
        from .errors import MissingDependencyError

        raise MissingDependencyError("opencv-python", "camera", "for camera streams") from exc
    source = args.source

    with _stdout_to_stderr(args.json) as out:
        summary = run_stream(
            args.path, source, display=args.display, host=args.host, port=args.port, record=args.record,
            duration=args.duration, max_frames=args.max_frames, task=args.task, top_k=args.top_k,
            threshold=args.threshold, loop=args.loop, realtime=args.realtime, max_clients=args.max_clients,
            threads=args.threads, artifact=args.artifact,
            source_options={"open_timeout": args.timeout, "read_timeout": args.timeout},
        )
        if args.json:
            _emit_json(out, summary)
        else:
            print(format_summary(summary))
    if summary.get("ended_by") == "source_lost":
        raise EdgeshipError(f"the source {source!r} was lost and could not be reopened")
    return 0


def add_stream_parser(subparsers) -> None:
    """Register ``edgeship stream`` on the CLI's sub-parsers."""
    s = subparsers.add_parser(
        "stream",
        help="run a bundle on a camera, video file, RTSP/HTTP URL or GStreamer pipeline, with live results",
        description="Capture, preprocess, infer and draw on separate threads; show the result in a window, or as a "
                    "web page on headless boards; print per-stage latency and end-to-end FPS at the end.",
    )
    s.add_argument("path", help="bundle folder or .tflite/.onnx file")
    s.add_argument("--source", required=True,
                   help="camera index (0), video file, rtsp://... or http://... URL, csi://0 (Jetson CSI camera), "
                        "or a GStreamer pipeline")
    s.add_argument("--display", choices=DISPLAYS, default="auto",
                   help="auto: a window when OpenCV has a GUI and a display, else the web page; none: just measure")
    s.add_argument("--host", default="127.0.0.1", help="web page address (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8080, help="web page port (default 8080; 0 picks a free one)")
    s.add_argument("--record", metavar="OUT.mp4", help="also write the annotated stream to this video file")
    s.add_argument("--task", choices=TASKS, default="auto", help="default: from the bundle (manifest task or outputs)")
    s.add_argument("--top-k", type=int, default=3, help="classes shown per frame (classification)")
    s.add_argument("--threshold", type=float, default=0.5, help="minimum detection score (default 0.5)")
    s.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    s.add_argument("--max-frames", type=int, metavar="N", help="stop after N processed frames")
    s.add_argument("--loop", action="store_true", help="replay a video file from its start when it ends")
    s.add_argument("--realtime", action="store_true", help="pace a video file at its frame rate, like a camera")
    s.add_argument("--timeout", type=float, default=10.0, help="seconds to wait when opening or reading a network source")
    s.add_argument("--max-clients", type=int, default=4, help="web viewers served at once (default 4)")
    s.add_argument("--artifact", help="artifact file name or format (tflite, onnx)")
    s.add_argument("--threads", type=int, help="inference threads")
    s.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    s.set_defaults(func=cmd_stream)


def main(argv=None) -> int:
    """``edgeship stream ...`` through the CLI's own ``main`` (its exit codes and error handling),
    registering the sub-command first if ``edgeship.cli`` does not yet: ``python -m edgeship.cli_stream ARGS``."""
    from . import cli

    original = cli.build_parser

    def build_parser():
        p = original()
        action = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")  # noqa: SLF001
        if "stream" not in action.choices:
            add_stream_parser(action)
        return p

    cli.build_parser = build_parser
    try:
        return cli.main(["stream", *(sys.argv[1:] if argv is None else argv)])
    finally:
        cli.build_parser = original


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
