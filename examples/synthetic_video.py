"""Write a synthetic video (coloured shapes moving over a generated background) for demos and tests.

    python examples/synthetic_video.py out.mp4 --seconds 5 --fps 30 --size 640x480

Nothing is downloaded: every frame is drawn with OpenCV. The shapes (circle,
square, triangle) are the classes the demo detector
(``edgeship.demos.detector``) is trained on, so its boxes appear
on this video.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

SHAPES = ("circle", "square", "triangle")


def background(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth two-colour gradient with a few soft stripes (no noise, nothing to download)."""
    c0 = rng.integers(40, 200, 3).astype(np.float32)
    c1 = rng.integers(40, 200, 3).astype(np.float32)
    ang = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(ang) * xx / w + np.sin(ang) * yy / h)
    t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    stripes = 0.08 * np.sin(2 * np.pi * (xx / w * rng.uniform(1, 4) + yy / h * rng.uniform(1, 4)))
    img = c0 * (1 - t[..., None]) + c1 * t[..., None] + 255 * stripes[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def draw_shape(img: np.ndarray, kind: int, cx: float, cy: float, r: float, color, angle: float = 0.0) -> tuple:
    """Draw shape ``kind`` (index into SHAPES) centred at (cx, cy) with radius r; return its box (x0, y0, x1, y1)."""
    import cv2

    color = tuple(int(c) for c in color)
    if kind == 0:
        cv2.circle(img, (int(round(cx)), int(round(cy))), int(round(r)), color, -1, cv2.LINE_AA)
        return cx - r, cy - r, cx + r, cy + r
    if kind == 1:
        s = r * 0.9
        cv2.rectangle(img, (int(cx - s), int(cy - s)), (int(cx + s), int(cy + s)), color, -1, cv2.LINE_AA)
        return cx - s, cy - s, cx + s, cy + s
    pts = np.array([[cx + r * np.cos(angle + a), cy + r * np.sin(angle + a)]
                    for a in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)], np.float32)
    cv2.fillPoly(img, [np.round(pts).astype(np.int32)], color, cv2.LINE_AA)
    return float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max())


def contrasting_color(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour, light or dark, that stands out on the mid-tone backgrounds."""
    c = rng.integers(0, 256, 3)
    c[rng.integers(0, 3)] = rng.choice([0, 255])
    return c


def write_video(path: str, *, seconds: float = 5.0, fps: float = 30.0, size: tuple[int, int] = (640, 480),
                objects: int = 3, seed: int = 0) -> int:
    """Write the video; returns the number of frames written.

    Raises:
        RuntimeError: OpenCV cannot open a writer for ``path``.
    """
    import cv2

    w, h = size
    rng = np.random.default_rng(seed)
    bg = background(h, w, rng)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.lower().endswith(".avi") else "mp4v"))
    writer = cv2.VideoWriter(path, fourcc, float(fps), (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write a video to {path!r} (OpenCV has no writer for it)")
    r = rng.uniform(0.08, 0.14, objects) * min(w, h)
    pos = np.stack([rng.uniform(r, w - r), rng.uniform(r, h - r)], axis=1)
    vel = rng.uniform(-1, 1, (objects, 2)) * min(w, h) * 0.4 / fps
    kinds = np.arange(objects) % len(SHAPES)
    colors = [contrasting_color(rng) for _ in range(objects)]
    n = int(round(seconds * fps))
    for i in range(n):
        frame = bg.copy()
        for k in range(objects):
            draw_shape(frame, int(kinds[k]), pos[k, 0], pos[k, 1], r[k], colors[k], angle=i * 0.03)
        cv2.putText(frame, f"frame {i}", (8, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        writer.write(frame)
        pos += vel
        for d, lim in ((0, w), (1, h)):
            lo, hi = pos[:, d] < r, pos[:, d] > lim - r
            vel[lo | hi, d] *= -1
            pos[:, d] = np.clip(pos[:, d], r, lim - r)
    writer.release()
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output", help="video file to write (.mp4 or .avi)")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--size", default="640x480", help="WIDTHxHEIGHT (default 640x480)")
    p.add_argument("--objects", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        p.error(f"--size {args.size!r} is not WIDTHxHEIGHT")
    n = write_video(args.output, seconds=args.seconds, fps=args.fps, size=(w, h), objects=args.objects, seed=args.seed)
    print(f"wrote {n} frames ({w}x{h} at {args.fps:g} fps) to {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
