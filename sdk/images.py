"""Image files: decoding with OpenCV under bounds, listing image folders.

Kept apart from the preprocessing rule (:mod:`edgeship.preprocess`, which
re-exports these names): this module is about bytes on disk, the rule about
pixels. OpenCV is imported inside the functions (see :func:`opencv`).
"""

from __future__ import annotations

import os

import numpy as np

from .errors import CalibrationError, InputError, MissingDependencyError

__all__ = ["IMAGE_EXTENSIONS", "MAX_IMAGE_FILE_BYTES", "MAX_IMAGE_PIXELS", "list_images", "opencv", "read_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")

# Bounds for decoded images (a decompression bomb must not take the process down).
MAX_IMAGE_PIXELS = 1 << 26  # 67 M pixels, ~200 MB as BGR uint8
MAX_IMAGE_FILE_BYTES = 1 << 29  # 512 MiB: no real image file is larger


def opencv():
    """Import OpenCV with pixel limits set before its first import.

    Raises:
        MissingDependencyError: OpenCV is not installed (names the ``camera`` extra).
    """
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
    cv2 = opencv()
    # Check the declared size before decoding (decompression bombs).
    from .safeio import open_regular  # noqa: PLC0415

    with open_regular(path, error=InputError, what="image") as fh:  # a FIFO or device is refused, never read
        if os.fstat(fh.fileno()).st_size > MAX_IMAGE_FILE_BYTES:
            raise InputError(f"image {path!r} is larger than {MAX_IMAGE_FILE_BYTES >> 20} MiB; not an image edgeship reads")
        try:
            data = fh.read(MAX_IMAGE_FILE_BYTES + 1)
        except (OSError, MemoryError) as exc:
            raise InputError(f"cannot read image {path!r}: {exc}") from None
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
        CalibrationError: the folder does not exist, or holds a FIFO, socket, device or a
            link leading out of it.
    """
    from .safeio import tree_files  # noqa: PLC0415

    if not os.path.isdir(folder):
        raise CalibrationError(f"image folder {folder!r} does not exist or is not a folder")
    # walked without leaving the folder: a FIFO, socket, device or a link out of it is refused, never opened
    return [p for rel, p in tree_files(folder, error=CalibrationError, what="image folder")
            if rel.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(rel).startswith(".")]
