"""Drawing results on frames, the window display and the recorder.

OpenCV is imported inside each function (``edgeship.runtime`` imports no cv2
at module level).
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

import numpy as np

from ...errors import EdgeshipError
from ...preprocess import opencv
from ...vocab import parse
from .options import Display, Task

__all__ = ["Recorder", "Window", "draw_results", "draw_stats", "has_gui", "overlay_mask", "resolve_display"]

_PALETTE = [(56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
            (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
            (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203)]


_PALETTE_BGR = np.array(_PALETTE, np.uint8)  # class id -> colour, for whole masks (overlay_mask)


def _color(i: int) -> tuple:
    return _PALETTE[int(i) % len(_PALETTE)]


def _text(cv2, img, text, org, scale, color=(255, 255, 255), bg=(0, 0, 0), thickness=1) -> int:
    """Text with a filled background; returns the height used."""
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    x, y = org
    cv2.rectangle(img, (x, y - th - 3), (x + tw + 4, y + base + 1), bg, cv2.FILLED)
    cv2.putText(img, text, (x + 2, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thickness, cv2.LINE_AA)
    return th + base + 4


def overlay_mask(img: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> None:
    """Blend a class colour over every pixel of ``img`` (BGR, in place) whose class in ``mask`` (same
    height and width) is not 0, the background; class 0 pixels are left as they are."""
    cv2 = opencv()
    ids = np.asarray(mask)
    fg = ids != 0
    if not fg.any():
        return
    colour = _PALETTE_BGR[ids % len(_PALETTE) if ids.max() >= len(_PALETTE) else ids]
    blend = cv2.addWeighted(img, 1.0 - alpha, colour, alpha, 0.0)
    np.copyto(img, blend, where=fg[..., None])


def draw_results(img: np.ndarray, results, task: Task) -> None:
    """Draw classes (top-left), boxes, or a segmentation's mask and classes on ``img`` in place."""
    cv2 = opencv()
    h, w = img.shape[:2]
    scale = max(0.4, min(1.0, w / 900))
    if task is Task.SEGMENT:
        overlay_mask(img, results.mask)
        y = int(22 * scale) + 4
        for c in [c for c in results.classes if c.id != 0][:5]:  # the largest classes but the background
            name = c.label if c.label is not None else f"class {c.id}"
            y += _text(cv2, img, f"{name}: {100 * c.score:.1f}%", (6, y), scale, bg=_color(c.id))
        return
    if task is Task.DETECT:
        thick = max(1, round(w / 400))
        for d in results:
            b = d.bbox
            p1, p2 = (int(b.xmin), int(b.ymin)), (int(b.xmax), int(b.ymax))
            cv2.rectangle(img, p1, p2, _color(d.id), thick, cv2.LINE_AA)
            name = d.label if d.label is not None else str(d.id)
            _text(cv2, img, f"{name} {d.score:.2f}", (p1[0], max(p1[1] - 2, 14)), scale * 0.8, bg=_color(d.id))
    else:
        y = int(22 * scale) + 4
        for c in results:
            name = c.label if c.label is not None else f"class {c.id}"
            y += _text(cv2, img, f"{name}: {c.score:.2f}", (6, y), scale, color=(255, 255, 255), bg=(40, 40, 40))


def draw_stats(img: np.ndarray, fps: float, timings: Mapping[str, float]) -> None:
    """One line of FPS and stage times along the bottom of ``img``."""
    cv2 = opencv()
    h, w = img.shape[:2]
    scale = max(0.35, min(0.6, w / 1100))
    parts = [f"{fps:5.1f} FPS"] + [f"{k[:4]} {timings[k]:.1f}" for k in ("capture", "preprocess", "inference",
                                                                         "postprocess", "draw") if k in timings]
    if "latency" in timings:
        parts.append(f"lat {timings['latency']:.0f} ms")
    _text(cv2, img, " | ".join(parts), (4, h - 6), scale, color=(120, 255, 120), bg=(0, 0, 0))


# ------------------------------------------------------------------------------ window display


def has_gui() -> bool:
    """Whether OpenCV can open a window here (built with a GUI backend, and a display to show it on)."""
    cv2 = opencv()
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

    Raises:
        InputError: ``display`` is not auto, window, web or none.
    """
    d = parse(Display, display, "--display")
    if d in (Display.AUTO, Display.WINDOW):
        if has_gui():
            return Display.WINDOW, None
        why = "OpenCV here has no GUI (opencv-python-headless) or there is no display"
        return Display.WEB, (f"{why}; serving the stream as a web page instead" if d is Display.WINDOW else None)
    return d, None


class Window:
    """An OpenCV window; :meth:`show` returns False once the user pressed Esc or q."""

    def __init__(self, name: str = "edgeship") -> None:
        self.name = name

    def show(self, img: np.ndarray) -> bool:
        cv2 = opencv()
        cv2.imshow(self.name, img)
        return (cv2.waitKey(1) & 0xFF) not in (27, ord("q"))

    def close(self) -> None:
        cv2 = opencv()
        try:
            cv2.destroyWindow(self.name)
        except cv2.error:
            pass


# ------------------------------------------------------------------------------ recording


class Recorder:
    """Writes annotated frames to a ``.mp4`` (mp4v) or ``.avi`` (MJPG) file, opened on the first frame.

    Raises (from :meth:`write`):
        EdgeshipError: OpenCV cannot open a video writer at ``path``.
    """

    def __init__(self, path: str, fps: float) -> None:
        self.path, self.fps = path, fps if fps and fps > 0 else 30.0
        self._w = None
        self.frames = 0

    def write(self, img: np.ndarray) -> None:
        if self._w is None:
            cv2 = opencv()
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
