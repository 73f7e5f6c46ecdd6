"""The backend protocol: what every engine module implements, and the types it shares.

A backend opens one model from its bytes (:class:`ModelSource`, read once and,
for a bundle, verified against the manifest before the backend sees them) and
runs raw tensors in the file's own dtypes and layout. Everything user-facing
(float I/O, quantization, batching, layouts) lives in :mod:`edgeship.runtime.io_plan`
and :mod:`edgeship.runtime.model`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Mapping

import numpy as np

from ... import safeio
from ...errors import ModelClosedError, ModelFormatError


def warn(msg: str, *args) -> None:
    """``logging.getLogger("edgeship.runtime").warning(msg, *args)``, importing logging only when
    there is something to say (it is 5 ms of a device's cold start otherwise)."""
    import logging  # noqa: PLC0415

    logging.getLogger("edgeship.runtime").warning(msg, *args)



def capture_fd2(fn):
    """(fn(), text written to file descriptor 2 meanwhile): native libraries log their reasons there."""
    import sys  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            try:
                result, error = fn(), None
            except Exception as exc:  # noqa: BLE001 - returned to the caller with the log
                result, error = None, exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    return result, error, text


KNOWN_NATIVE_NOISE = ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",)


def quiet_native_enabled() -> bool:
    """The CLI sets ``EDGESHIP_QUIET_NATIVE=1``: engines' known start-up lines stay off a person's terminal
    (``EDGESHIP_VERBOSE=1`` shows them). A library caller's process is left alone."""
    return os.environ.get("EDGESHIP_QUIET_NATIVE") == "1" and os.environ.get("EDGESHIP_VERBOSE") != "1"


def without_native_noise(fn):
    """``fn()`` with file descriptor 2 captured; every line but the :data:`KNOWN_NATIVE_NOISE` ones
    is written back to stderr afterwards (an allow-list of what is dropped, nothing else is lost);
    an exception of ``fn`` is re-raised after its log is shown."""
    import sys  # noqa: PLC0415

    result, error, text = capture_fd2(fn)
    kept = [ln for ln in text.splitlines() if ln.strip() and ln.strip() not in KNOWN_NATIVE_NOISE]
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")
        sys.stderr.flush()
    if error is not None:
        raise error
    return result

__all__ = ["Backend", "ExecutionInfo", "KNOWN_NATIVE_NOISE", "ModelSource", "RawTensor", "as_source", "capture_fd2",
           "closed_error", "quiet_native_enabled", "warn", "without_native_noise"]


@dataclass(frozen=True)
class RawTensor:
    """A model input or output as the engine sees it."""

    name: str
    shape: tuple  # ints; None for dynamic dimensions
    dtype: np.dtype
    scale: tuple = ()  # quantization scales ((): not quantized)
    zero_point: tuple = ()
    axis: int = 0
    quantized_inside: bool = False  # a float input the model itself quantizes (TFLite QUANTIZE, ONNX QuantizeLinear)


@dataclass(frozen=True)
class ExecutionInfo:
    """What actually runs the model, and why anything else was skipped (immutable)."""

    backend: str  # e.g. "litert", "tflite_runtime", "tensorflow.lite", "onnxruntime"
    engine_version: str = ""
    device: str = "cpu"  # "cpu", "gpu", "edgetpu", "npu" ...
    delegate: str | None = None  # delegate or execution provider that runs (part of) it
    providers: tuple = ()  # ONNX Runtime providers actually in use
    ops_delegated: int | None = None
    ops_total: int | None = None
    threads: int | None = None
    skipped: tuple = ()  # ("tflite_runtime: not installed", ...)
    fallback: bool = False  # True when the requested/preferred choice was not used
    chosen: str = ""  # load(backend="auto"): why this artifact x engine (measured, or the static order)

    def __post_init__(self) -> None:
        object.__setattr__(self, "providers", tuple(self.providers))
        object.__setattr__(self, "skipped", tuple(self.skipped))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["providers"] = list(self.providers)
        d["skipped"] = list(self.skipped)
        return d


@dataclass(frozen=True, repr=False)
class ModelSource:
    """The bytes of one model file, read once; what the engine is given.

    Attributes:
      path: Where the bytes were read from (messages, and the folder ONNX
        external data must live in).
      data: The file's bytes (for a bundle: the bytes whose sha256 matched the manifest).
      sha256: Their sha256 when it was checked, else ``None``.
      external_sha256: ONNX only: ``{location: sha256}`` the external-data files
        must match (a bundle's manifest), or ``None`` (a bare file: no hashes,
        the files are still read once and confined to the folder).
    """

    path: str
    data: bytes
    sha256: str | None = None
    external_sha256: Mapping | None = None

    @classmethod
    def read(cls, path) -> "ModelSource":
        """Read a bare model file once.

        Raises:
          ModelFormatError: it cannot be read, is not a regular file, or is empty.
        """
        path = os.fspath(path)
        # Regular files only, checked on the open descriptor (a FIFO or a device never blocks or streams).
        with safeio.open_regular(path, error=ModelFormatError, what="model file") as fh:
            try:
                data = fh.read()
            except OSError as exc:
                raise ModelFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
        if not data:
            raise ModelFormatError(f"{path} is empty; re-copy or re-convert the model")
        return cls(path, data)

    def __repr__(self) -> str:
        return f"ModelSource({self.path!r}, {len(self.data)} bytes)"


def closed_error(what: str) -> ModelClosedError:
    return ModelClosedError(f"model {what} is closed; load it again to run it")


class Backend:
    """Protocol of a backend. Subclasses implement the methods below.

    ``invoke`` may be called from several threads; the Model serialises calls
    with a lock unless ``thread_safe`` is True (ONNX Runtime sessions are).
    After ``close()``, ``invoke`` raises :class:`~edgeship.errors.ModelClosedError`.
    """

    name: str = "?"
    formats: tuple = ()
    thread_safe: bool = False
    options_type: type = object  # the frozen options dataclass this backend takes

    def __init__(self, source: ModelSource, options=None) -> None:  # pragma: no cover - protocol
        raise NotImplementedError

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(usable here, reason when not) without loading a model."""
        raise NotImplementedError

    inputs: list  # list[RawTensor]
    outputs: list  # list[RawTensor]
    info: ExecutionInfo

    def invoke(self, arrays: list) -> list:
        """Run one batch: raw arrays in input order -> raw arrays in output order."""
        raise NotImplementedError

    def resize_batch(self, batch: int) -> bool:
        """Make the model accept ``batch`` samples at once if it can; False if not."""
        return False

    def close(self) -> None:
        pass


def as_source(source) -> ModelSource:
    """A :class:`ModelSource` from a source or a path (read once)."""
    return source if isinstance(source, ModelSource) else ModelSource.read(source)

