"""``load()``: open a bundle or a bare model file, with an explicit fallback.

The run path, in order: read the manifest -> choose the artifact
(:mod:`.select`) -> read the artifact's bytes once and check their size and
sha256 (:func:`read_artifact`) -> open a backend on *those bytes*, trying the
registered backends in order and recording each one skipped
(:func:`open_backend`) -> wrap it in a :class:`~edgeship.runtime.model.Model`.
An Edge TPU-compiled artifact that cannot get its delegate falls back to a CPU
artifact of the bundle (:func:`open_edgetpu`).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .. import bundle as _bundle
from .. import manifest as _manifest
from ..errors import (
    BackendUnavailableError,
    FallbackError,
    InputError,
    ModelFormatError,
    ModelNotFoundError,
    UnsupportedModelError,
)
from ..vocab import Device, DeviceKind, Format
from .backends import registry
from .backends.base import Backend, ModelSource, warn
from .backends.delegates import delegate_specs
from .backends.options import BackendOptions, CompiledModelOptions, TFLiteOptions
from .model import Model
from .select import choose_artifact, is_edgetpu, sniff_format, without_edgetpu

__all__ = ["default_threads", "load", "open_backend", "open_edgetpu", "read_artifact"]



_INSTALL_HINT = {
    Format.TFLITE.value: "install a TFLite interpreter: `pip install ai-edge-litert` (or tflite-runtime)",
    Format.ONNX.value: 'install ONNX Runtime: `pip install "edgeship[onnx]"`',
}


def default_threads() -> int:
    """The CPUs this process may use, at most 4."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, 4))


def read_artifact(bundle_dir: str, artifact: dict) -> ModelSource:
    """The bytes of a bundle's artifact, read once and checked against the manifest.

    :func:`edgeship.bundle.read_verified` opens the file without following a
    link, compares its size with the manifest before reading and computes the
    sha256 on the very bytes it returns; those bytes are what the engine is
    given, so replacing the file after this check changes nothing that runs.
    ONNX external-data files must be listed (``external_data: [{file, sha256}]``)
    and are checked the same way by the ONNX Runtime backend.

    Raises:
      IntegrityError: the file is missing, not a regular file, or its size or
        sha256 differs from the manifest.
    """
    data = _bundle.read_verified(bundle_dir, artifact)
    external = {str(e.get("file")): str(e.get("sha256")) for e in artifact.get("external_data") or ()
                if isinstance(e, dict)}
    return ModelSource(os.path.join(bundle_dir, artifact["file"]), data, sha256=artifact["sha256"],
                       external_sha256=external)


def _options_for(cls: type, *, threads, device, strict, delegates, options) -> BackendOptions:
    """The frozen options ``cls`` takes, from load()'s arguments (and a user's ``options``)."""
    kind = getattr(cls, "options_type", BackendOptions)
    if options is not None and isinstance(options, kind):
        extra = {"delegates": tuple(options.delegates) + tuple(delegates)} if hasattr(options, "delegates") else {}
        return dataclasses.replace(options, threads=options.threads if options.threads is not None else threads,
                                   device=options.device if options.device is not None else device,
                                   strict=options.strict or strict, **extra)
    if kind in (TFLiteOptions, CompiledModelOptions):
        return kind(threads=threads, device=device, strict=strict, delegates=delegates)
    return kind(threads=threads, device=device, strict=strict)


def open_backend(source: ModelSource, fmt: str, *, backend: str | None = None, device: Device | None = None,
                 threads: int | None = None, strict: bool = False, delegates: tuple = (),
                 options: BackendOptions | None = None) -> Backend:
    """Open ``source`` with the first backend that can, ``backend`` first when given.

    Every backend skipped is recorded in the result's ``info.skipped``; a
    requested backend that cannot run is a fallback (one warning; a
    :class:`FallbackError` with ``strict``).

    Raises:
      UnsupportedModelError: no backend is registered for ``fmt``.
      InputError: ``backend`` does not run ``fmt`` files.
      BackendUnavailableError: no installed backend can run it.
      FallbackError: ``strict`` and a fallback would be needed.
    """
    path = source.path
    entries = registry.registered(fmt)
    if not entries:
        raise UnsupportedModelError(f"no registered backend runs {fmt} files ({path})")
    skipped: list = []
    fallback = False
    if backend is not None:
        forced = registry.entry(backend)
        if fmt not in forced.formats:
            raise InputError(f"backend {backend!r} runs {', '.join(forced.formats)} files, not {fmt} ({path})")
        entries = [forced] + [e for e in entries if e is not forced]
    delegate_skip: list = []
    if delegates and fmt != Format.TFLITE.value:
        why = (f"delegate {', '.join(os.path.basename(d.library) for d in delegates)}: TFLite delegates do not "
               f"apply to {fmt} files ({os.path.basename(path)}); use device= for ONNX Runtime providers")
        if strict:
            raise FallbackError(f"{why}; strict=True forbids running without it")
        warn("%s; running without it", why)
        delegate_skip, delegates = [why], ()
    for e in entries:
        cls, why = registry.backend_class(e)
        if cls is not None:
            opts = _options_for(cls, threads=threads, device=device, strict=strict, delegates=delegates,
                                options=options)
            try:
                be = cls(source, opts)
            except FallbackError:
                raise
            except BackendUnavailableError as exc:
                cls, why = None, str(exc)
        if cls is None:
            skipped.append(why)
            if e.name == backend:
                if strict:
                    raise FallbackError(f"backend {backend!r} was requested with strict=True but cannot run "
                                        f"here: {why}")
                fallback = True
            continue
        if fallback:
            warn("backend %r is not usable (%s); running %s with %r instead",
                         backend, skipped[0], os.path.basename(path), e.name)
        be.info = dataclasses.replace(be.info, skipped=tuple(delegate_skip + skipped) + be.info.skipped,
                                      fallback=be.info.fallback or fallback or bool(delegate_skip))
        return be
    raise BackendUnavailableError(f"no backend can run {path} here: {'; '.join(skipped)}; {_INSTALL_HINT.get(fmt, '')}")


def open_edgetpu(source: ModelSource, entry: dict, *, backend, device, threads, strict,
                 options=None) -> tuple[Backend | None, str]:
    """(backend, "") for an Edge TPU-compiled artifact; (None, why) (after one warning) when the TPU is unusable.

    An Edge TPU-compiled file cannot run without the delegate, so a fallback
    means another artifact of the bundle, not the same file on the CPU.

    Raises:
      FallbackError: ``strict`` and the Edge TPU cannot be used.
    """
    why = "the delegate took no op"
    try:  # strict inside: a failing delegate raises with its reason instead of warning (one warning, below)
        be = open_backend(source, entry["format"], backend=backend, device=device, threads=threads, strict=True,
                          options=options)
    except FallbackError as exc:
        be, why = None, str(exc).replace("; strict=True forbids running without it", "")
    except ModelFormatError as exc:
        be, why = None, str(exc)
    if be is not None and be.info.delegate is not None:
        return be, ""
    if be is not None:
        be.close()
    if strict:
        raise FallbackError(f"{entry['file']} needs the Edge TPU delegate, which cannot be loaded ({why}); "
                            "strict=True forbids running another artifact")
    warn("%s needs the Edge TPU, which is not usable here (%s); running a CPU artifact instead",
                 entry["file"], why)
    return None, why


def _threads_arg(threads) -> int:
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise InputError(f"threads must be a positive integer or None, got {threads!r}")
    return int(threads)


def load(path, *, artifact: str | None = None, backend: str | None = None, device: str | None = None,
         threads: int | None = None, strict: bool = False, isolate: bool = False, delegate=None,
         check_finite: bool = True, options: BackendOptions | None = None, exact_input: bool = False) -> Model:
    """Open a bundle folder or a bare ``.tflite``/``.onnx`` file for inference.

    For a bundle, ``manifest.json`` is read and checked against the schema,
    the artifact to run is chosen (see :func:`~edgeship.runtime.choose_artifact`:
    by default the INT8 TFLite file when a TFLite interpreter is installed, else
    ONNX), its bytes are read once and their size and sha256 verified, and the
    engine is given those bytes (the file is not reopened).

    TFLite files run on the first available of ``ai_edge_litert`` ("litert"),
    ``tflite_runtime`` ("tflite_runtime") and ``tensorflow.lite``
    ("tensorflow.lite"), each imported only when tried; ONNX files on
    ONNX Runtime ("onnxruntime"). :attr:`Model.info` reports what runs the
    model and why anything else was skipped.

    Args:
      path: A bundle folder (with ``manifest.json``) or a model file.
      artifact: Bundle only: a file name, a format (``"tflite"``/``"onnx"``) or
        a precision (``"int8"``, ``"fp16"`` ...) to run instead of the default.
      backend: A registered backend name (``"litert"``, ``"tflite_runtime"``,
        ``"tensorflow.lite"``, ``"litert_compiled"``, ``"onnxruntime"``,
        ``"openvino"``) to use first. If it cannot run here, the next one for
        the format is used, with one logged warning and ``info.fallback`` set
        (an error with ``strict``). ``"auto"``: the artifact and engine that
        ``edgeship bench BUNDLE --all --save`` measured fastest on this machine
        (:mod:`edgeship.runtime.choices`), else the static order;
        ``info.chosen`` says which and why.
      device: ``None``/``"cpu"``, ``"gpu"``, ``"npu"``, ``"tensorrt"``,
        ``"edgetpu"`` or ``"edgetpu:usb:0"``... (parsed by
        :meth:`edgeship.vocab.Device.parse`); the backend loads the matching
        delegate or execution provider, falling back to the CPU (one warning,
        ``info.fallback``) unless ``strict``.
      threads: CPU threads for the engine (XNNPACK ``num_threads``). Default:
        the CPUs this process may use, at most 4.
      strict: Turn any fallback (backend, delegate, device) into a :class:`FallbackError`.
      isolate: First load the model and run one zero input in a child process
        (:func:`edgeship.isolate.probe_model`), so that a malformed or hostile
        file that crashes or hangs the engine raises :class:`ModelFormatError`
        here instead of killing this process. Costs one interpreter start-up.
      delegate: TFLite external delegate(s) to load with ``load_delegate``:
        ``"PATH[:key=value,...]"``, ``(path, {options})``, a
        :class:`~edgeship.runtime.backends.options.DelegateSpec` or a list of
        them. :attr:`Model.info` then reports the delegate and how many of the
        model's ops it took. A delegate that cannot be created, or takes no op,
        is a fallback: one warning, or a :class:`FallbackError` with ``strict``.
      check_finite: Refuse NaN/Inf in float arrays fed to an integer-quantized
        input (:class:`InputError` naming the input); ``False`` skips the check.
      exact_input: ``predict``/``classify``/``detect``/``segment`` on a uint8
        frame quantize it exactly as ``run()`` would. By default the fused
        image path may compile the frame-to-integer table into a cheaper
        equal-to-one-step operation (e.g. ``XOR 0x80`` for a model fed
        ``pixel / 127.5 - 1`` whose table differs from ``pixel - 128`` only on
        float32 rounding ties): at most one quantization step on some pixel
        values, never more (:class:`~edgeship.runtime.fastimage.PixelMap`).
      options: Backend options for the long tail (``OrtOptions(providers=...,
        trt_fp16=...)``, ``TFLiteOptions``): used by the backend that takes
        that type; ``threads``/``device``/``strict`` fill what it leaves unset.

    Returns:
      A :class:`Model`.

    Raises:
      ModelNotFoundError: ``path`` does not exist.
      BundleError: a folder without (or with an invalid) ``manifest.json``, or
        no artifact matches ``artifact``.
      IntegrityError: the artifact's size or sha256 differs from the manifest.
      ModelFormatError: the model file is corrupt, truncated or not a model.
      UnsupportedModelError: a file that is neither ``.tflite`` nor ``.onnx``.
      InputError: an unknown ``backend`` or ``device``, or bad ``threads``.
      BackendUnavailableError: no installed backend can run the model.
      FallbackError: ``strict`` and the requested backend/delegate/device is unusable.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        raise InputError(f"load() takes a path, got {type(path).__name__}") from None
    threads = _threads_arg(threads)
    dev = Device.parse(device) if device is not None else None
    if options is not None and not isinstance(options, BackendOptions):
        raise InputError(f"options must be backend options such as OrtOptions or TFLiteOptions, "
                         f"got {type(options).__name__}")
    chosen = ""
    if backend == "auto":  # the measured choice of `edgeship bench --all --save`, else the static order
        from .choices import resolve_auto  # noqa: PLC0415

        backend, artifact, chosen = resolve_auto(path, artifact)
    if backend is not None:
        registry.entry(backend)
    delegates = delegate_specs(delegate)
    if not os.path.exists(path):
        raise ModelNotFoundError(f"{path!r} does not exist; pass a bundle folder or a .tflite/.onnx file")
    if isolate:
        from ..isolate import probe_model  # noqa: PLC0415 - a child process, only when asked

        probe_model(path, backend=backend, artifact=artifact)
    common = dict(backend=backend, threads=threads, strict=strict, options=options)
    kw = dict(check_finite=check_finite, exact_input=bool(exact_input))
    if not os.path.isdir(path):
        if artifact is not None:
            raise InputError(f"artifact={artifact!r} applies to bundle folders only; {path} is a file")
        fmt = sniff_format(path)  # before reading it all: a large file of another kind is refused at once
        source = ModelSource.read(path)
        be = open_backend(source, fmt, device=dev, delegates=delegates, **common)
        return _wrap(be, source.path, None, None, kw, chosen)
    manifest = _manifest.read(path)
    entry = choose_artifact(manifest, artifact, backend=backend, device=dev)
    skipped = ()
    if is_edgetpu(entry) and dev is not None and dev.kind is DeviceKind.EDGETPU and artifact is None:
        opened, why = open_edgetpu(read_artifact(path, entry), entry, device=dev, **common)
        if opened is not None:
            return _wrap(opened, os.path.join(path, entry["file"]), manifest, entry, kw, chosen)
        entry = choose_artifact(without_edgetpu(manifest), None, backend=backend, device=None)
        skipped = (f"{entry['file']}: the Edge TPU delegate is not usable ({why}), ran the CPU artifact instead",)
        dev = None
    source = read_artifact(path, entry)
    be = open_backend(source, entry["format"], device=dev, delegates=delegates, **common)
    if skipped:
        be.info = dataclasses.replace(be.info, skipped=skipped + be.info.skipped, fallback=True)
    return _wrap(be, source.path, manifest, entry, kw, chosen)


def _wrap(be: Backend, file: str, manifest: dict | None, entry: dict | None, kw: dict,
          chosen: str = "") -> Model:
    if chosen:
        be.info = dataclasses.replace(be.info, chosen=chosen)
    try:
        return Model(be, path=file, manifest=manifest, artifact=entry, **kw)
    except BaseException:
        be.close()
        raise
