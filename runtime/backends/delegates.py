"""TFLite external delegates: spec strings, the library for a device, loading checks, op accounting.

numpy-free and engine-free at import time; used by the TFLite backend, by
:func:`edgeship.runtime.load` (``delegate=``) and by the CLI (``--delegate``).
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any

from ...errors import InputError
from ...vocab import Device, DeviceKind
from .options import DelegateSpec

__all__ = ["EDGETPU_LIBS", "GPU_LIBS", "delegate_for_device", "delegate_specs", "delegated_ops", "dlopen_check",
           "normalize_delegates", "parse_delegate_spec"]

# Library names per platform, the first one is what load_delegate is given by name.
EDGETPU_LIBS = ("libedgetpu.so.1", "libedgetpu.1.dylib", "edgetpu.dll")
GPU_LIBS = ("libtensorflowlite_gpu_delegate.so", "libtensorflowlite_gpu_gl.so", "libtensorflowlite_gpu_delegate.dylib")
_EDGETPU_LIB = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}

_OPTS_START = re.compile(r":(?=[A-Za-z_][A-Za-z0-9_.-]*=)")


def parse_delegate_spec(spec: str) -> tuple[str, dict]:
    """``"PATH[:key=value,...]"`` -> ``(PATH, {key: value})``.

    A value may itself contain commas (``ops=ADD,MUL``): an item without ``=``
    continues the previous value. A ``:`` that is not followed by ``key=`` is
    part of the path (``C:\\delegates\\x.dll``).

    Raises:
      InputError: an empty path, or options before any ``key=``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"a delegate is given as 'PATH[:key=value,...]', got {spec!r}")
    m = _OPTS_START.search(spec)
    path, opts_text = (spec[:m.start()], spec[m.start() + 1:]) if m else (spec, "")
    if not path:
        raise InputError(f"delegate spec {spec!r} has no library path; expected 'PATH[:key=value,...]'")
    options: dict = {}
    last = None
    for item in opts_text.split(",") if opts_text else ():
        if "=" in item:
            key, value = item.split("=", 1)
            key = key.strip()
            if not key:
                raise InputError(f"delegate spec {spec!r}: empty option name in {item!r}")
            options[key] = value
            last = key
        elif last is None:
            raise InputError(f"delegate spec {spec!r}: {item!r} is not key=value")
        else:
            options[last] += "," + item
    return path, options


def normalize_delegates(delegate: Any) -> list:
    """``delegate=`` of :func:`load` -> ``[(path, options), ...]``.

    Accepts a spec string, a ``(path, options)`` pair, a :class:`DelegateSpec`,
    or a list of these.

    Raises:
      InputError: anything else.
    """
    if delegate is None:
        return []
    single = isinstance(delegate, (str, os.PathLike, DelegateSpec)) or (
        isinstance(delegate, tuple) and len(delegate) == 2 and isinstance(delegate[1], dict))
    items = [delegate] if single else delegate
    try:
        items = list(items)
    except TypeError:
        raise InputError(f"delegate must be 'PATH[:key=value,...]', (path, options) or a list of them, "
                         f"got {type(delegate).__name__}") from None
    out = []
    for it in items:
        if isinstance(it, os.PathLike):
            it = os.fspath(it)
        if isinstance(it, DelegateSpec):
            out.append((it.library, it.as_dict()))
        elif isinstance(it, str):
            out.append(parse_delegate_spec(it))
        elif isinstance(it, (tuple, list)) and len(it) == 2 and isinstance(it[1], dict):
            out.append((os.fspath(it[0]), {str(k): str(v) for k, v in it[1].items()}))
        else:
            raise InputError(f"delegate entries are 'PATH[:key=value,...]' or (path, options), got {it!r}")
    return out


def delegate_specs(delegate: Any) -> tuple:
    """:func:`normalize_delegates` as a tuple of :class:`DelegateSpec`."""
    return tuple(DelegateSpec(path, opts) for path, opts in normalize_delegates(delegate))


def delegate_for_device(device: Device | None) -> DelegateSpec | None:
    """The delegate that runs a TFLite model on ``device``, ``None`` for the CPU.

    Raises:
      InputError: no TFLite delegate exists for that kind of device (npu, tensorrt);
        the TFLite backend turns this into a fallback to the CPU.
    """
    if device is None or device.kind is DeviceKind.CPU:
        return None
    if device.kind is DeviceKind.GPU:
        return DelegateSpec(GPU_LIBS[0])
    if device.kind is DeviceKind.EDGETPU:
        lib = _EDGETPU_LIB.get(platform.system(), EDGETPU_LIBS[0])
        return DelegateSpec(lib, {"device": device.spec} if device.spec else {})
    raise InputError(f"no TFLite delegate runs on device {str(device)!r} (TFLite delegates: gpu, edgetpu); "
                     "for an NPU use backend='litert_compiled' or an ONNX artifact")


def dlopen_check(path: str) -> None:
    """Raise OSError when ``path`` is not a loadable library (before ``load_delegate``,
    whose half-built ``Delegate`` object otherwise complains at garbage collection)."""
    import ctypes  # noqa: PLC0415

    ctypes.CDLL(path)


def delegated_ops(wrapper, n_original: int | None = None) -> tuple[int, int, int]:
    """(nodes taken by delegates, original nodes, delegate kernels) of a TFLite interpreter.

    ``wrapper`` is the interpreter's native wrapper (``Interpreter._interpreter``:
    ``NumNodes``/``NodeName``/``NodeInputs``/``NodeOutputs``). TFLite keeps the
    original nodes first and appends one ``DELEGATE`` node per partition a
    delegate took; the nodes a partition replaced are found by walking back
    from its outputs to its inputs through the original nodes. Call it before
    ``allocate_tensors()`` to count only the external delegates (LiteRT applies
    its default XNNPACK delegate lazily, at the first allocation).
    """
    n = int(wrapper.NumNodes())
    names = [str(wrapper.NodeName(i)) for i in range(n)]
    if n_original is None:
        n_original = names.index("DELEGATE") if "DELEGATE" in names else n
    producer = {}
    for i in range(n_original):
        for t in wrapper.NodeOutputs(i):
            producer[int(t)] = i
    taken: set = set()
    kernels = 0
    for i in range(n_original, n):
        if names[i] != "DELEGATE":
            continue
        kernels += 1
        stop = {int(t) for t in wrapper.NodeInputs(i)}
        todo = [int(t) for t in wrapper.NodeOutputs(i)]
        seen: set = set()
        while todo:
            t = todo.pop()
            if t in seen or t in stop or t < 0:
                continue
            seen.add(t)
            node = producer.get(t)
            if node is None or node in taken:
                continue
            taken.add(node)
            todo.extend(int(x) for x in wrapper.NodeInputs(node))
    return len(taken), n_original, kernels
