"""The one image -> tensor rule: :class:`PreprocessSpec`.

A spec says how a decoded image becomes a model input: resize to ``size``
(``resize`` mode, ``interpolation``), convert to ``color``, then
``value = (pixel * scale - mean[c]) / std[c]`` per channel, in ``layout``
(NHWC or NCHW), cast to ``dtype``. It is stored in the manifest, so that a
device needs no other code to turn an image into a result.

Every path that turns an image into an input goes through
:meth:`PreprocessSpec.to_input` (``Model.predict``, ``detect``, calibration
images, the stream's fallback path); the stream's ``FastPreprocess`` is an
optimised implementation of the same rule, proved equal bit for bit by
``tests/test_preprocess_rule.py``. A model without a stored spec gets
:meth:`PreprocessSpec.default_for` its input shape and layout (a bare NCHW
``.onnx`` with a dynamic batch included).

OpenCV is imported only inside the functions that resize or convert images;
image files are read by :mod:`edgeship.images` (re-exported here: ``read_image``,
``list_images``, ``opencv``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Sequence

import numpy as np

from .errors import InputError
from .images import IMAGE_EXTENSIONS, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_PIXELS, list_images, opencv, read_image
from .vocab import Layout

__all__ = [
    "ColorOrder",
    "IMAGE_EXTENSIONS",
    "MAX_IMAGE_FILE_BYTES",
    "MAX_IMAGE_PIXELS",
    "Interpolation",
    "Layout",
    "PreprocessSpec",
    "ResizeMode",
    "image_layout",
    "list_images",
    "opencv",
    "read_image",
]

MAX_SIDE = 16384  # largest preprocessing size per side (the manifest schema says the same)

IMAGE_LAYOUTS = (Layout.NHWC, Layout.NCHW)


class ResizeMode(str, Enum):
    STRETCH = "stretch"
    LETTERBOX = "letterbox"
    CENTER_CROP = "center_crop"
    NONE = "none"


class ColorOrder(str, Enum):
    RGB = "rgb"
    BGR = "bgr"
    GRAY = "gray"


class Interpolation(str, Enum):
    """How an image is resized: ``area`` (``INTER_AREA`` when shrinking, ``INTER_LINEAR``
    when enlarging: the default) or ``linear`` (``INTER_LINEAR`` always: ~10x cheaper
    for a 640x480 -> 224x224 frame, what most camera pipelines do)."""

    AREA = "area"
    LINEAR = "linear"


def image_layout(shape: Sequence, declared: "str | Layout | None" = None) -> Layout | None:
    """The image layout of a 4-D input ``shape`` (batch first; ``None`` for a dynamic dim).

    ``declared`` (``NHWC``/``NCHW``, e.g. the manifest's source layout) wins when it
    is an image layout; otherwise the layout is read from where the channel
    axis (1 or 3) is: last -> NHWC, second -> NCHW; both (a 3x3x3 input) -> NHWC.
    Returns ``None`` when ``shape`` is not image-shaped.
    """
    if declared is not None:
        try:
            lay = Layout(declared.value if isinstance(declared, Layout) else str(declared).upper())
        except ValueError:
            lay = None
        if lay in IMAGE_LAYOUTS:
            return lay
    shape = tuple(shape)
    if len(shape) != 4:
        return None
    last, first = shape[3] in (1, 3), shape[1] in (1, 3)
    if last:
        return Layout.NHWC
    if first:
        return Layout.NCHW
    return None


def _hwc(shape: Sequence, layout: Layout) -> tuple:
    s = tuple(shape)
    return (s[1], s[2], s[3]) if layout is Layout.NHWC else (s[2], s[3], s[1])


@dataclass(frozen=True)
class PreprocessSpec:
    """How to turn a decoded image into one input sample.

    ``value = (pixel * scale - mean[c]) / std[c]`` per channel ``c``, after
    resizing to ``size`` (height, width) and converting to ``color``; the
    sample is laid out as ``layout`` and cast to ``dtype``.

    Raises:
        InputError: a size that is not two positive integers, or a layout that
            is not an image layout.
    """

    size: tuple[int, int]
    resize: ResizeMode = ResizeMode.STRETCH
    color: ColorOrder = ColorOrder.RGB
    layout: Layout = Layout.NHWC
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dtype: str = "float32"
    interpolation: Interpolation = Interpolation.AREA

    def __post_init__(self) -> None:
        size = tuple(self.size)
        if len(size) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in size):
            raise InputError(f"preprocessing size must be two positive integers (height, width), got {self.size!r}")
        object.__setattr__(self, "size", (int(size[0]), int(size[1])))
        for name, enum in (("resize", ResizeMode), ("color", ColorOrder), ("layout", Layout),
                           ("interpolation", Interpolation)):
            value = getattr(self, name)
            if not isinstance(value, enum):
                try:
                    object.__setattr__(self, name, enum(value))
                except ValueError:
                    raise InputError(f"preprocessing {name} {value!r} is unknown; expected one of "
                                     f"{', '.join(m.value for m in enum)}") from None
        if self.layout not in IMAGE_LAYOUTS:
            raise InputError(f"preprocessing layout {self.layout.value!r} is not an image layout; expected NHWC or NCHW")
        if self.dtype not in ("float32", "uint8", "int8"):
            raise InputError(f"preprocessing dtype {self.dtype!r} is unknown; expected float32, uint8 or int8")
        if max(self.size) > MAX_SIDE:
            raise InputError(f"preprocessing size {self.size[0]}x{self.size[1]} is larger than {MAX_SIDE} per side")
        for name in ("mean", "std"):
            vals = getattr(self, name)
            if len(vals) not in (1, self.channels):
                raise InputError(f"preprocessing {name} has {len(vals)} values; expected 1 or {self.channels} "
                                 f"(one per channel of color {self.color.value})")
        if any(float(v) == 0.0 for v in self.std):
            raise InputError("preprocessing std has a 0 (division by zero)")

    @property
    def channels(self) -> int:
        return 1 if self.color is ColorOrder.GRAY else 3

    def sample_shape(self, layout: "str | Layout | None" = None) -> tuple[int, int, int]:
        """The shape of one sample (no batch axis) in ``layout`` (default: the spec's)."""
        lay = image_layout((), layout) or self.layout
        h, w = self.size
        return (h, w, self.channels) if lay is Layout.NHWC else (self.channels, h, w)

    # -- construction -----------------------------------------------------------------

    @classmethod
    def default_for(cls, shape: Sequence, layout: "str | Layout | None" = None) -> "PreprocessSpec":
        """The default preprocessing of a model input: stretch to its size, RGB (gray for
        one channel), ``pixel / 255``, in its layout.

        Args:
          shape: The input shape with its batch axis (``(None, 3, 224, 224)`` or
            ``(1, 224, 224, 3)``; ``None`` marks a dynamic dimension).
          layout: The input's declared layout (``NHWC``/``NCHW``); ``None`` or
            ``other`` reads it from the shape (see :func:`image_layout`).

        Raises:
          InputError: the shape is not an image shape (4-D with 1 or 3
            channels), or its height/width are dynamic.
        """
        shape = tuple(shape)
        lay = image_layout(shape, layout)
        hwc = _hwc(shape, lay) if lay is not None else None
        if hwc is None or hwc[2] not in (1, 3):
            raise InputError(f"the input shape {shape} is not an image shape (NHWC or NCHW with 1 or 3 channels); "
                             "give a preprocessing spec, or pass arrays to run()")
        h, w, c = hwc
        if not h or not w or h < 0 or w < 0:
            raise InputError(f"the input shape {shape} has no fixed height and width; give a preprocessing spec "
                             "with size=HxW")
        return cls(size=(int(h), int(w)), color=ColorOrder.GRAY if c == 1 else ColorOrder.RGB, layout=lay)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["resize"] = self.resize.value
        d["color"] = self.color.value
        d["layout"] = self.layout.value
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if self.interpolation is Interpolation.AREA:  # the default: manifests written before it stay identical
            del d["interpolation"]
        else:
            d["interpolation"] = self.interpolation.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        """Raises: InputError (a ValueError) or KeyError on a malformed dict."""
        return cls(
            size=(int(d["size"][0]), int(d["size"][1])),
            resize=ResizeMode(d.get("resize", "stretch")),
            color=ColorOrder(d.get("color", "rgb")),
            layout=Layout(d.get("layout", "NHWC")),
            scale=float(d.get("scale", 1.0 / 255.0)),
            mean=tuple(float(v) for v in d.get("mean", (0.0,))),
            std=tuple(float(v) for v in d.get("std", (1.0,))),
            dtype=str(d.get("dtype", "float32")),
            interpolation=Interpolation(d.get("interpolation", "area")),
        )

    @classmethod
    def parse(cls, text: str, *, default: "PreprocessSpec | None" = None, default_size: Sequence[int] | None = None,
              channels: int | None = None) -> "PreprocessSpec":
        """Parse the CLI form ``size=224x224,resize=letterbox,color=bgr,scale=1/255,mean=0.5,std=0.5,layout=NHWC``.

        Keys not given come from ``default`` (the model's
        :meth:`default_for`, so ``size``, gray and the layout follow the model's
        real input layout), else from ``default_size``/``channels``.

        Raises:
            InputError: an unknown key, a malformed value, or no size at all.
        """
        values: dict = {}
        if default is not None:
            values.update(size=default.size, layout=default.layout)
            if default.color is ColorOrder.GRAY:
                values["color"] = ColorOrder.GRAY
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
                elif key == "interpolation":
                    values["interpolation"] = Interpolation(val.lower())
                elif key == "scale":
                    values["scale"] = _number(val)
                elif key in ("mean", "std"):
                    values[key] = tuple(_number(v) for v in val.split(":"))
                else:
                    raise InputError(f"--preprocess has unknown key {key!r}; expected size, resize, color, layout, "
                                     "interpolation, scale, mean or std")
            except (ValueError, ZeroDivisionError) as exc:
                if isinstance(exc, InputError):
                    raise
                raise InputError(f"--preprocess value {part!r} is malformed: {key} takes {_expected(key)}") from None
        if "size" not in values:
            raise InputError("--preprocess needs size=HxW because the model's input size is unknown")
        if "scale" not in values and any(abs(v) > 1.0 for v in values.get("mean", ())):
            raise InputError("--preprocess mean/std are on the 0..255 pixel scale but scale defaults to 1/255 "
                             "(pixels in 0..1: mean=127.5 would give values near -1 only); add scale=1, or "
                             "give mean/std on the 0..1 scale (e.g. mean=0.5,std=0.5)")
        try:
            return cls(**values)
        except InputError as exc:
            raise InputError(f"--preprocess: {exc}") from None

    def check_input(self, shape: Sequence, layout: "str | Layout | None" = None, *, what: str = "preprocessing") -> None:
        """Refuse a spec whose samples do not fit a model input of ``shape`` (batch first).

        Dynamic dimensions (``None``) fit anything; ``layout`` is the layout the
        model takes (default: read from the shape).

        Raises:
            InputError: the sample shape differs from the model input; the
              message names ``what`` (``--preprocess`` on the CLI).
        """
        shape = tuple(shape)
        lay = image_layout(shape, layout) or self.layout
        want = self.sample_shape(lay)
        have = shape[1:]
        if len(have) != 3 or any(d is not None and d > 0 and d != v for d, v in zip(have, want)):
            h, w = self.size
            raise InputError(f"{what} gives {lay.value} samples shaped {want} ({self.color.value}, size={h}x{w}) "
                             f"but the model input is {shape}; fix size=/color= to match the model")

    # -- the rule ----------------------------------------------------------------------

    def to_input(self, image: np.ndarray, *, bgr: bool = True, layout: "str | Layout | None" = None) -> np.ndarray:
        """THE image -> input rule: one decoded image -> a batch of one for ``Model.run``.

        Args:
          image: HxW or HxWxC uint8 (BGR as OpenCV gives it when ``bgr``).
          layout: The layout the model takes (NHWC/NCHW); default: the spec's.

        Returns:
          ``(1, H, W, C)`` or ``(1, C, H, W)``, float32 (or the spec's integer dtype).

        Raises:
          InputError: the array is not an image, or ``resize=none`` and its size differs.
          MissingDependencyError: OpenCV is needed (resize, gray) and missing.
        """
        x = self.apply(image, bgr=bgr)
        target = image_layout((), layout) or self.layout
        if target is not self.layout:
            x = np.ascontiguousarray(np.transpose(x, (1, 2, 0) if target is Layout.NHWC else (2, 0, 1)))
        if self.dtype in ("uint8", "int8"):
            info = np.iinfo(self.dtype)
            x = np.clip(np.rint(x), info.min, info.max).astype(self.dtype)
        return x[None]

    def apply(self, image: np.ndarray, *, bgr: bool = True) -> np.ndarray:
        """One decoded image -> one float32 sample (no batch axis) in the spec's ``layout``
        (resize, colour, scale/mean/std; :meth:`to_input` adds the layout of the
        model, the dtype and the batch axis).

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
        x = self.normalize(img[:, :, None] if img.ndim == 2 else img, Layout.NHWC)
        if self.layout is Layout.NCHW:
            x = np.transpose(x, (2, 0, 1))
        return np.ascontiguousarray(x, dtype=np.float32)

    def normalize(self, pixels: np.ndarray, layout: "str | Layout | None" = None) -> np.ndarray:
        """``(pixel * scale - mean[c]) / std[c]`` in float32 on pixels already resized and in
        colour order (one sample or a batch; the channel axis is last for NHWC, third
        from last for NCHW; default: the spec's layout). The one place of the formula."""
        lay = image_layout((), layout) or self.layout
        x = np.asarray(pixels).astype(np.float32) * np.float32(self.scale)
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        if lay is Layout.NCHW and x.ndim >= 3:
            mean, std = mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)
        return (x - mean) / std

    def pixel_table(self) -> np.ndarray:
        """``(256, channels)`` float32: what the rule makes of each 8-bit value per channel
        (scale, mean, std and the integer dtype's rounding), in the spec's colour order.
        The stream's fast path applies it with ``cv2.LUT``; it equals :meth:`apply`
        value for value because the same float32 operations run in the same order."""
        px = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None], (256, self.channels))
        x = self.normalize(px, Layout.NHWC)
        if self.dtype in ("uint8", "int8"):
            info = np.iinfo(self.dtype)
            x = np.clip(np.rint(x), info.min, info.max).astype(self.dtype).astype(np.float32)
        return np.ascontiguousarray(x, dtype=np.float32)

    def resize_flag(self, image_hw: tuple[int, int]) -> int:
        """The OpenCV interpolation flag the rule resizes an image of ``image_hw`` with."""
        cv2 = opencv()
        h, w = self.size
        shrink = image_hw[0] > h or image_hw[1] > w
        return cv2.INTER_AREA if shrink and self.interpolation is Interpolation.AREA else cv2.INTER_LINEAR

    def _convert_color(self, img: np.ndarray, *, bgr: bool) -> np.ndarray:
        if self.color is ColorOrder.GRAY:
            if img.ndim == 2:
                return img
            cv2 = opencv()
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
        cv2 = opencv()
        ih, iw = img.shape[:2]
        interp = self.resize_flag((ih, iw))
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


def _expected(key: str) -> str:
    """What ``--preprocess KEY=`` takes, for an error message (never the raw parsing error)."""
    choices = {"resize": ResizeMode, "color": ColorOrder, "layout": Layout, "interpolation": Interpolation}
    if key in choices:
        return "one of " + ", ".join(m.value for m in choices[key])
    return {"size": "HxW, two positive integers such as size=224x224",
            "scale": "a number or a fraction with a non-zero denominator, such as scale=1/255"}.get(
        key, f"numbers, one per channel separated by ':', such as {key}=0.5:0.5:0.5")


def _number(text: str) -> float:
    text = text.strip()
    if "/" in text:
        a, b = text.split("/", 1)
        return float(a) / float(b)
    return float(text)

