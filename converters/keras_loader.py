"""Old import path of the Keras loader; the code lives in :mod:`edgeship.converters.sources.keras`."""

from __future__ import annotations

from .sources.keras import *  # noqa: F401,F403
from .sources.keras import keras_source, tree_sha256  # noqa: F401

_keras_source = keras_source  # still used as ``keras_loader._keras_source`` by convert.py
_tree_sha256 = tree_sha256
