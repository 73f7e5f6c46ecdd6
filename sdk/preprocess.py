"""The preprocessing spec: how an image becomes a model input.

Stored in the manifest so that a device needs no other code to turn an image
into a result. OpenCV is imported only inside the functions that decode or
resize images.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Sequence

import numpy as np

from .errors import CalibrationError, InputError, MissingDependencyError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")

# Bounds for decoded images (a decompression bomb must not take the process down).
MAX_IMAGE_PIXELS = 1 << 26  # 67 M pixels, ~200 MB as BGR uint8


class ResizeMode(str, Enum):
    STRETCH = "stretch"
    LETTERBOX = "letterbox"
    CENTER_CROP = "center_crop"
    NONE = "none"


class ColorOrder(str, Enum):
    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"


class Layout(str, Enum):
    NHWC = "NHWC"
    NCHW = "NCHW"


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn a decoded image into one input sample.

    ``value = (pixel * scale - mean[c]) / std[c]`` per channel ``c``, after
    resizing to ``size`` (height, width) and converting to ``color``.
    """

    size: tuple[int, int]
    resize: ResizeMode = ResizeMode.STRETCH
    color: ColorOrder = ColorOrder.RGB
    layout: Layout = Layout.NHWC
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dtype: str = "float32"

    @property
    def channels(self) -> int:
        return 1 if self.color is ColorOrder.GRAY else 3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["resize"] = self.resize.value
        d["color"] = self.color.value
        d["layout"] = self.layout.value
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(
            size=(int(d["size"][0]), int(d["size"][1])),
            resize=ResizeMode(d.get("resize", "stretch")),
            color=ColorOrder(d.get("color", "rgb")),
            layout=Layout(d.get("layout", "NHWC")),
            scale=float(d.get("scale", 1.0 / 255.0)),
            mean=tuple(float(v) for v in d.get("mean", (0.0,))),
            std=tuple(float(v) for v in d.get("std", (1.0,))),
            dtype=str(d.get("dtype", "float32")),
        )

    @classmethod
    def parse(cls, text: str, *, default_size: Sequence[int] | None = None, channels: int | None = None) -> "PreprocessSpec":
        """Parse the CLI form ``size=224x224,resize=letterbox,color=bgr,scale=1/255,mean=0.5,std=0.5,layout=NHWC``.

        Raises:
            InputError: an unknown key or a malformed value.
        """
        values: dict = {}
        if default_size is not None:
            values["size"] = (int(default_size[0]), int(default_size[1]))
        if channels == 1:
            values["color"] = ColorOrder.GRAY
        for part in filter(None, (p.strip() for p in (text or "").split(","))):
            if "=" not in part:
                raise InputError(f"--preprocess item {part!r} is not key=value (e.g. size=224x224)")
            key, val = (s.strip() for s in part.split("=", 1))
            try:
                if key == "size":
                    h, w = val.lower().split("x")
                    values["size"] = (int(h), int(w))
                elif key == "resize":
                    values["resize"] = ResizeMode(val.lower())
                elif key == "color":
                    values["color"] = ColorOrder(val.lower())
                elif key == "layout":
                    values["layout"] = Layout(val.upper())
                elif key == "scale":
                    values["scale"] = _number(val)
                elif key in ("mean", "std"):
                    values[key] = tuple(_number(v) for v in val.split(":"))
                else:
                    raise InputError(
                        f"--preprocess has unknown key {key!r}; expected size, resize, color, layout, scale, mean or std"
                    )
            except (ValueError, ZeroDivisionError) as exc:
                if isinstance(exc, InputError):
                    raise
                raise InputError(f"--preprocess value {part!r} is malformed: {exc}") from None
        if "size" not in values:
            raise InputError("--preprocess needs size=HxW because the model's input size is unknown")
        return cls(**values)

    # -- application -----------------------------------------------------------------

    def apply(self, image: np.ndarray, *, bgr: bool = True) -> np.ndarray:
        """Turn one decoded image (HxW or HxWxC uint8, BGR as OpenCV gives it when
        ``bgr``) into one model sample (no batch axis) in ``layout``.

        Raises:
            InputError: the array is not an image.
        """
        img = np.asarray(image)
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[:, :, 0]
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
            raise InputError(f"expected an image shaped HxW or HxWx3, got an array shaped {img.shape}")
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[:, :, :3]
        img = self._convert_color(img, bgr=bgr)
        img = self._resize(img)
        x = img.astype(np.float32) * np.float32(self.scale)
        if x.ndim == 2:
            x = x[:, :, None]
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        x = (x - mean) / std
        if self.layout is Layout.NCHW:
            x = np.transpose(x, (2, 0, 1))
        return np.ascontiguousarray(x, dtype=np.float32)

    def _convert_color(self, img: np.ndarray, *, bgr: bool) -> np.ndarray:
        if self.color is ColorOrder.GRAY:
            if img.ndim == 2:
                return img
            cv2 = _cv2()
            return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY if bgr else cv2.COLOR_RGB2GRAY)
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
            return img
        want_bgr = self.color is ColorOrder.BGR
        return img if want_bgr == bgr else img[:, :, ::-1]

    def _resize(self, img: np.ndarray) -> np.ndarray:
        h, w = self.size
        if img.shape[0] == h and img.shape[1] == w or self.resize is ResizeMode.NONE:
            if self.resize is ResizeMode.NONE and (img.shape[0], img.shape[1]) != (h, w):
                raise InputError(f"image is {img.shape[1]}x{img.shape[0]} but the model needs {w}x{h} and resize=none")
            return img
        cv2 = _cv2()
        ih, iw = img.shape[:2]
        interp = cv2.INTER_AREA if ih > h or iw > w else cv2.INTER_LINEAR
        if self.resize is ResizeMode.STRETCH:
            return cv2.resize(img, (w, h), interpolation=interp)
        if self.resize is ResizeMode.CENTER_CROP:
            s = max(h / ih, w / iw)
            nh, nw = max(h, round(ih * s)), max(w, round(iw * s))
            r = cv2.resize(img, (nw, nh), interpolation=interp)
            top, left = (nh - h) // 2, (nw - w) // 2
            return r[top : top + h, left : left + w]
        # letterbox
        s = min(h / ih, w / iw)
        nh, nw = max(1, round(ih * s)), max(1, round(iw * s))
        r = cv2.resize(img, (nw, nh), interpolation=interp)
        out = np.full((h, w) + r.shape[2:], 114, dtype=r.dtype)
        top, left = (h - nh) // 2, (w - nw) // 2
        out[top : top + nh, left : left + nw] = r
        return out


def _number(text: str) -> float:
    text = text.strip()
    if "/" in text:
        a, b = text.split("/", 1)
        return float(a) / float(b)
    return float(text)


def _cv2():
    """Import OpenCV with pixel limits set before its first import."""
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
    try:
        import cv2  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependencyError("opencv-python", "camera", "to decode and resize images") from exc
    return cv2


def read_image(path: str) -> np.ndarray:
    """Decode an image file with OpenCV (BGR or gray uint8).

    Raises:
        InputError: the file is missing, not an image, truncated or too large.
    """
    if not os.path.isfile(path):
        raise InputError(f"image {path!r} does not exist")
    cv2 = _cv2()
    # Check the declared size before decoding (decompression bombs).
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:3] == b"\xff\xd8\xff" and b"\xff\xd9" not in data[-256:]:
        # libjpeg decodes a truncated JPEG partially (the rest grey) and OpenCV returns it:
        # a third of a picture must not pass as an image.
        raise InputError(f"cannot decode image {path!r}: the JPEG is truncated (no end-of-image marker)")
    buf = np.frombuffer(data, np.uint8)
    img = None
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise InputError(f"cannot decode image {path!r}: {str(exc).strip().splitlines()[-1]}") from None
    if img is None:
        raise InputError(f"cannot decode image {path!r}: not a supported image, or truncated")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.dtype != np.uint8:
        raise InputError(f"image {path!r} has pixel type {img.dtype}; expected 8- or 16-bit")
    return img


def list_images(folder: str) -> list[str]:
    """Image files under ``folder``, recursively, sorted (deterministic order).

    Raises:
        CalibrationError: the folder does not exist.
    """
    if not os.path.isdir(folder):
        raise CalibrationError(f"image folder {folder!r} does not exist or is not a folder")
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                found.append(os.path.join(root, f))
    return found
