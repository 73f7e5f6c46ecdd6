"""PNG files from numpy arrays with ``zlib`` and ``struct`` only (the runtime has no OpenCV).

``edgeship run --save-masks`` writes segmentation masks with it: one grayscale
PNG per image whose pixel values are the class ids (8-bit when every id fits in
0..255, else 16-bit), at the image's size. Any PNG reader (OpenCV's
``IMREAD_UNCHANGED``, Pillow) gives the ids back exactly.
"""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

from ..errors import InputError

__all__ = ["encode_png", "write_png"]

_COLOR_TYPE = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (gray, RGB, RGBA)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(image: np.ndarray, *, level: int = 6) -> bytes:
    """The PNG bytes of ``image``: ``(H, W)`` gray or ``(H, W, 3|4)`` RGB(A), uint8 or uint16.

    Raises:
        InputError: another shape or dtype, or an empty image.
    """
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in _COLOR_TYPE or a.shape[0] < 1 or a.shape[1] < 1:
        raise InputError(f"a PNG holds an (H, W) or (H, W, 3|4) image, got an array shaped {np.shape(image)}")
    if a.dtype == np.uint8:
        depth = 8
    elif a.dtype == np.uint16:
        depth, a = 16, a.astype(">u2")  # PNG samples are big-endian
    else:
        raise InputError(f"a PNG holds uint8 or uint16 pixels, got {a.dtype}")
    h, w, c = a.shape
    rows = np.ascontiguousarray(a).view(np.uint8).reshape(h, w * c * (depth // 8))
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", w, h, depth, _COLOR_TYPE[c], 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
            + _chunk(b"IEND", b""))


def write_png(path: str, image: np.ndarray) -> str:
    """Write ``image`` (see :func:`encode_png`) to ``path`` (replaced atomically); the path.

    An integer class mask is written as 8-bit gray when its values fit 0..255, else 16-bit.

    Raises:
        InputError: the image cannot be a PNG (negative ids, ids over 65535, a bad shape).
    """
    a = np.asarray(image)
    if a.dtype.kind in "iub" and a.dtype not in (np.uint8, np.uint16):
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise InputError(f"mask values {lo}..{hi} do not fit a PNG (0..65535)")
        a = a.astype(np.uint8 if hi <= 255 else np.uint16)
    data = encode_png(a)
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return path
