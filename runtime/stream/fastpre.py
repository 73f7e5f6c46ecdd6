"""The stream's preprocessing: the one image -> input rule, fused into one pass over the pixels.

:class:`FastPreprocess` lives in the runtime's core (:mod:`edgeship.runtime.fastimage`),
where ``Model.predict`` uses it too; the stream builds it with its own
``interpolation`` (``linear`` by default, about 10x cheaper than ``INTER_AREA``
for a 640x480 -> 224x224 frame: that is the rule with
``PreprocessSpec(..., interpolation="linear")``, not another rule) and calls it
on each frame. It equals the reference rule bit for bit
(``tests/test_preprocess_rule.py``).
"""

from __future__ import annotations

from ..fastimage import FastPreprocess, PixelMap, engine_table

__all__ = ["FastPreprocess", "PixelMap", "engine_table"]
