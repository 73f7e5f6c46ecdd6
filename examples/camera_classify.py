"""Classify a camera (or video) stream with an edgeship bundle and draw the top classes on it.

    python examples/camera_classify.py artifacts/digits --source 0
    python examples/camera_classify.py artifacts/digits --source clip.mp4 --display web

The stream runs capture, preprocessing, inference and drawing on separate
threads; the loop below only sees finished frames.
"""

import argparse
import sys

import edgeship.runtime as rt
from edgeship.runtime.stream import Stream, format_summary
from edgeship.runtime.stream import WebView


def main(argv=None):
    p = argparse.ArgumentParser(description="Classify a camera stream.")
    p.add_argument("model", help="bundle folder or .tflite file")
    p.add_argument("--source", default="0", help="camera index, video file, rtsp://... URL or GStreamer pipeline")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--display", choices=("web", "none"), default="web", help="web: http://127.0.0.1:PORT/")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: until the source ends)")
    args = p.parse_args(argv)

    model = rt.load(args.model)
    view = WebView(port=args.port).start() if args.display == "web" else None
    if view:
        print(f"open {view.url}", file=sys.stderr)

    with model, Stream(model, args.source, task="classify", top_k=args.top_k) as stream:
        try:
            for result in stream:  # result.image has the classes and FPS drawn on it
                best = result.results[0]
                print(f"frame {result.index}: {best.label or best.id} {best.score:.2f} "
                      f"({result.timings['latency']:.0f} ms)", end="\r", file=sys.stderr)
                if view:
                    view.publish(result.image)
                    view.set_stats(stream.stats())
                if args.max_frames and stream.frames >= args.max_frames:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            if view:
                view.close()
    print("\n" + format_summary(stream.summary()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
