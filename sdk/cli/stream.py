"""``edgeship stream``: run a bundle on a camera, video file, URL or GStreamer pipeline, with live results."""

from __future__ import annotations

import argparse
import os

from ..errors import EdgeshipError, MissingDependencyError, UsageError
from ..vocab import Task
from .common import add_accel_arguments, emit_json, int_at_least, load_kwargs, require_path, stdout_to_stderr, \
    unit_interval

DISPLAYS = ("auto", "window", "web", "none")
# --task takes the vocabulary's names; the stream's own words for them.
STREAM_TASKS = {"auto": "auto", Task.CLASSIFICATION.value: "classify", Task.DETECTION.value: "detect",
                Task.SEGMENTATION.value: "segment"}
ALIASES = {"classify": Task.CLASSIFICATION.value, "detect": Task.DETECTION.value, "segment": Task.SEGMENTATION.value}
RECORD_EXTS = (".mp4", ".avi", ".mov", ".m4v", ".mkv")


def task_arg(text: str) -> str:
    """``--task``: auto, classification, detection or segmentation (``classify``/``detect``/``segment`` too)."""
    t = ALIASES.get(text.strip().lower(), text.strip().lower())
    if t not in STREAM_TASKS:
        raise argparse.ArgumentTypeError(f"{text!r} is not supported; expected one of {', '.join(STREAM_TASKS)}")
    return t


def _check(args) -> None:
    require_path(args.path, "model")
    if args.duration is not None and args.duration <= 0:
        raise UsageError(f"--duration must be > 0 seconds, got {args.duration}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be in 0..65535, got {args.port}")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.record:
        folder = os.path.dirname(os.path.abspath(args.record))
        require_path(folder, "--record folder")
        if os.path.splitext(args.record)[1].lower() not in RECORD_EXTS:
            raise UsageError(f"--record {args.record!r}: use a .mp4 or .avi file name")


def cmd_stream(args) -> int:
    _check(args)
    try:
        from edgeship.runtime.stream import format_summary, run_stream  # noqa: PLC0415 - OpenCV when it runs
    except ImportError as exc:
        if isinstance(exc, EdgeshipError):
            raise
        raise MissingDependencyError("opencv-python", "camera", "for camera streams") from exc
    source = args.source
    with stdout_to_stderr(args.json) as out:
        summary = run_stream(
            args.path, source, display=args.display, host=args.host, port=args.port, record=args.record,
            duration=args.duration, max_frames=args.max_frames, task=STREAM_TASKS[args.task], top_k=args.top_k,
            threshold=args.threshold, iou=args.iou, loop=args.loop, realtime=args.realtime,
            max_clients=args.max_clients, threads=args.threads, artifact=args.artifact,
            source_options={"open_timeout": args.timeout, "read_timeout": args.timeout}, **load_kwargs(args),
        )
        if args.json:
            emit_json(out, summary)
        else:
            print(format_summary(summary))
    if summary.get("ended_by") == "source_lost":
        raise EdgeshipError(f"the source {source!r} was lost and could not be reopened")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser(
        "stream",
        help="run a bundle on a camera, video file, RTSP/HTTP URL or GStreamer pipeline, with live results",
        description="Capture, preprocess, infer and draw on separate threads; show the result in a window, or as a "
                    "web page on headless boards; print per-stage latency and end-to-end FPS at the end.",
    )
    s.add_argument("path", help="bundle folder or .tflite/.onnx file")
    s.add_argument("--source", required=True,
                   help="camera index (0), video file, rtsp://... or http://... URL, csi://0 (Jetson CSI camera), "
                        "or a GStreamer pipeline (required)")
    s.add_argument("--display", choices=DISPLAYS, default="auto",
                   help="auto: a window when OpenCV has a GUI and a display, else the web page; none: just measure "
                        "(default auto)")
    s.add_argument("--host", default="127.0.0.1", help="web page address (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8080, help="web page port (default 8080; 0 picks a free one)")
    s.add_argument("--record", metavar="OUT.mp4", help="also write the annotated stream to this video file "
                                                       "(default: none)")
    s.add_argument("--task", type=task_arg, default="auto", metavar="|".join(STREAM_TASKS),
                   help="default auto: from the bundle (manifest task or outputs)")
    s.add_argument("--top-k", type=int_at_least(1), default=3, help="classes shown per frame (default 3)")
    s.add_argument("--threshold", type=unit_interval, default=0.5, help="minimum detection score (default 0.5)")
    s.add_argument("--iou", type=unit_interval, default=0.45,
                   help="boxes overlapping more than this are merged by NMS (default 0.45)")
    s.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: when the source ends)")
    s.add_argument("--max-frames", type=int_at_least(1), metavar="N",
                   help="stop after N processed frames (default: no limit)")
    s.add_argument("--loop", action="store_true", help="replay a video file from its start when it ends (default: off)")
    s.add_argument("--realtime", action="store_true",
                   help="pace a video file at its frame rate, like a camera (default: as fast as it decodes)")
    s.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait when opening or reading a network source (default 10)")
    s.add_argument("--max-clients", type=int_at_least(1), default=4, help="web viewers served at once (default 4)")
    s.add_argument("--artifact", help="artifact file name or format (tflite, onnx); default: the best for this device")
    s.add_argument("--threads", type=int_at_least(1),
                   help="inference threads (default: cores-1 for live sources, else the runtime's)")
    s.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    add_accel_arguments(s)
    s.set_defaults(func=cmd_stream)
    return s

