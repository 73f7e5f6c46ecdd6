"""The model's side of the image -> input rule, shared by every task adapter and the stream.

pycoral's ``adapters/common.py`` in spirit: small free functions over anything
that looks like a model (``inputs``, and optionally ``manifest``, ``artifact``,
``labels``), so a stand-in model in a test works as well as
:class:`edgeship.runtime.Model`.

- :func:`input_layout`: the layout ``model.run`` takes (the manifest's source
  layout, else the artifact's, else read from the input shape: a bare NCHW
  ``.onnx`` with a dynamic batch is NCHW).
- :func:`preprocess_spec`: the manifest's spec, else
  :meth:`PreprocessSpec.default_for` the first input.
- :func:`prepare_input`: :meth:`PreprocessSpec.to_input` in that layout.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ...errors import BundleError, InputError
from ...preprocess import Layout, PreprocessSpec, image_layout

__all__ = ["input_layout", "model_labels", "preprocess_spec", "prepare_input"]


def _manifest(model) -> Mapping:
    man = getattr(model, "manifest", None)
    return man if isinstance(man, Mapping) else {}


def _first_shape(model) -> tuple:
    inputs = getattr(model, "inputs", None) or ()
    if not inputs:
        raise InputError("the model reports no inputs, so its preprocessing cannot be derived")
    return tuple(inputs[0].shape)


def input_layout(model) -> Layout | None:
    """The image layout ``model.run`` takes its first input in, or ``None`` when it is not an image.

    The manifest's ``source.layout`` (``run`` speaks the source layout), else
    the artifact's ``layout``, else what the input shape says (see
    :func:`edgeship.preprocess.image_layout`).
    """
    declared = (_manifest(model).get("source") or {}).get("layout")
    if declared not in ("NHWC", "NCHW"):
        art = getattr(model, "artifact", None)
        declared = art.get("layout") if isinstance(art, Mapping) else None
    try:
        shape = _first_shape(model)
    except InputError:
        shape = ()
    return image_layout(shape, declared)


def preprocess_spec(model) -> PreprocessSpec:
    """The preprocessing a model's first input needs.

    ``model.preprocessing`` when it is a spec, else the manifest's
    ``preprocessing``, else :meth:`PreprocessSpec.default_for` the input shape
    in :func:`input_layout` (stretch, RGB or gray, ``pixel / 255``).

    Raises:
        BundleError: the manifest's spec is malformed.
        InputError: no spec and the input is not image-shaped (or has a dynamic size).
    """
    spec = getattr(model, "preprocessing", None)
    if isinstance(spec, PreprocessSpec):
        return spec
    d = _manifest(model).get("preprocessing")
    if d:
        try:
            return PreprocessSpec.from_dict(d)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise BundleError(f"the manifest's preprocessing spec is malformed: {exc}") from None
    return PreprocessSpec.default_for(_first_shape(model), input_layout(model))


def prepare_input(model, spec: PreprocessSpec, image: np.ndarray) -> np.ndarray:
    """One BGR image -> a batch of one for ``model.run`` (the one rule, in the model's layout)."""
    return spec.to_input(image, bgr=True, layout=input_layout(model))


def model_labels(model) -> Sequence[str] | None:
    """The model's class labels (its ``labels``, else the manifest's), or ``None``."""
    labels = getattr(model, "labels", None)
    if labels:
        return list(labels)
    labels = _manifest(model).get("labels")
    return list(labels) if labels else None


def model_decoder(model) -> Mapping | None:
    """The detection decoder spec the conversion recorded (manifest ``decoder``), or ``None``."""
    dec = getattr(model, "decoder", None)
    if isinstance(dec, Mapping):
        return dec
    dec = _manifest(model).get("decoder")
    return dec if isinstance(dec, Mapping) else None
