"""Detect objects in a camera (or video) stream and print or show the boxes.

    python -m edgeship.demos.detector            # trains the demo detector once (~1 min)
    python examples/synthetic_video.py shapes.mp4          # a video it can find shapes in
    python examples/camera_detect.py .edgeship-demo/detector-int8 --source shapes.mp4 --record boxes.mp4

On a device, swap the source: --source 0 (USB camera), --source csi://0
(Jetson CSI camera), --source rtsp://user:pass@camera/stream.
"""

import argparse
import sys

import edgeship.runtime as rt
from edgeship.runtime.stream import format_summary, run_stream


def main(argv=None):
    p = argparse.ArgumentParser(description="Detect objects in a camera stream.")
    p.add_argument("model", help="detection bundle folder or .tflite file")
    p.add_argument("--source", default="0", help="camera index, video file, rtsp://... URL, csi://0 or a pipeline")
    p.add_argument("--threshold", type=float, default=0.5, help="minimum score")
    p.add_argument("--display", choices=("auto", "window", "web", "none"), default="auto")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--record", help="write the annotated video here (.mp4)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    args = p.parse_args(argv)

    def show(result):  # called for every processed frame
        for d in result.results:
            b = d.bbox
            print(f"frame {result.index}: {d.label} {d.score:.2f} at ({b.xmin:.0f},{b.ymin:.0f})-"
                  f"({b.xmax:.0f},{b.ymax:.0f})")

    with rt.load(args.model) as model:
        summary = run_stream(model, args.source, task="detect", threshold=args.threshold, display=args.display,
                             port=args.port, record=args.record, duration=args.duration, on_result=show)
    print(format_summary(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
