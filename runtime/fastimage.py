"""The zero-copy image path of ``Model.predict``: a uint8 frame into an integer-quantized input in one pass.

For a model whose single input is integer-quantized (INT8/UINT8 I/O), the
preprocessing rule and the input quantization are folded into one 256-entry
table per channel: resize (the rule's flag), colour order, then ``cv2.LUT``
straight to the engine's integer dtype, with no float image in between. This
is the stream's :class:`~edgeship.runtime.stream.fastpre.FastPreprocess`,
which equals the reference rule followed by ``Model.run``'s quantization bit
for bit; ``Model.predict`` hands its result to ``run`` as already-quantized
data. Float inputs, letterbox/centre-crop specs, per-channel input
quantization and non-BGR frames keep the reference path.
"""

from __future__ import annotations

import numpy as np

from ..errors import MissingDependencyError

__all__ = ["FastImage", "build"]


class FastImage:
    """Callable: frame -> an input batch of one in the engine's integer dtype, or ``None`` (use the reference)."""

    def __init__(self, fast) -> None:
        self._fast = fast
        self._usable = True

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        if not self._usable:
            return None
        try:
            return self._fast(image)
        except MissingDependencyError:  # no OpenCV: the reference path may still do without it
            self._usable = False
            return None


def build(model, spec) -> FastImage | None:
    """The fast path for ``model`` (a Model) and ``spec``, or ``None`` when its input is not integer-quantized
    or the fast path does not apply."""
    inputs = tuple(model.inputs)
    if len(inputs) != 1 or np.dtype(inputs[0].dtype).kind not in "iu" or inputs[0].quantization is None:
        return None
    from .stream.fastpre import FastPreprocess  # noqa: PLC0415 - first predict() only

    fast = FastPreprocess.build(model, spec)
    return FastImage(fast) if fast is not None else None
