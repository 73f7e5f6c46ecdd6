"""Accelerator helpers: delegate specs and an account of what ran where.

numpy-free and engine-free at import time; used by the TFLite backend, by
:func:`edgeship.runtime.load` (``delegate=``) and by the CLI (``--delegate``).
"""

from __future__ import annotations

import os
import re
from typing import Any

from ..errors import InputError

__all__ = ["parse_delegate_spec", "normalize_delegates", "delegated_ops"]

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

    Accepts a spec string, a ``(path, options)`` pair, or a list of these.

    Raises:
      InputError: anything else.
    """
    if delegate is None:
        return []
    items = [delegate] if isinstance(delegate, (str, os.PathLike)) or (
        isinstance(delegate, tuple) and len(delegate) == 2 and isinstance(delegate[1], dict)) else delegate
    try:
        items = list(items)
    except TypeError:
        raise InputError(f"delegate must be 'PATH[:key=value,...]', (path, options) or a list of them, "
                         f"got {type(delegate).__name__}") from None
    out = []
    for it in items:
        if isinstance(it, os.PathLike):
            it = os.fspath(it)
        if isinstance(it, str):
            out.append(parse_delegate_spec(it))
        elif isinstance(it, (tuple, list)) and len(it) == 2 and isinstance(it[1], dict):
            out.append((os.fspath(it[0]), {str(k): str(v) for k, v in it[1].items()}))
        else:
            raise InputError(f"delegate entries are 'PATH[:key=value,...]' or (path, options), got {it!r}")
    return out


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


# -- what this machine can run --------------------------------------------------------------

_DELEGATE_LIBS = {
    "edgetpu": ("libedgetpu.so.1", "libedgetpu.1.dylib", "edgetpu.dll"),
    "gpu": ("libtensorflowlite_gpu_delegate.so", "libtensorflowlite_gpu_gl.so", "libtensorflowlite_gpu_delegate.dylib"),
}
_LIB_DIRS = ("/usr/lib", "/usr/local/lib", "/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
             "/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/arm-linux-gnueabihf", "/opt/homebrew/lib")

# (flag, what it means for INT8 inference); x86 from "flags", ARM from "Features".
CPU_FEATURES = (
    ("avx2", "x86 AVX2: the baseline XNNPACK/ONNX Runtime INT8 kernels (8-bit multiply-add via VPMADDUBSW)"),
    ("avx512f", "x86 AVX-512: wider vectors; INT8 kernels use 512-bit registers"),
    ("avx512_vnni", "x86 AVX-512 VNNI: one-instruction INT8 dot products (VPDPBUSD): INT8 convolutions and matmuls run well ahead of FP32"),
    ("avx_vnni", "x86 AVX-VNNI: INT8 dot products on 256-bit vectors (Alder Lake and later)"),
    ("amx_int8", "x86 AMX-INT8: tile matrix units; large INT8 matmuls much faster (oneDNN / ONNX Runtime)"),
    ("asimd", "ARM NEON: INT8 kernels with 8/16-bit multiplies (every ARM64 CPU)"),
    ("asimddp", "ARM dot product (SDOT/UDOT): INT8 kernels well ahead of plain NEON; XNNPACK and ORT use it (Pi 5, A76+)"),
    ("i8mm", "ARM INT8 matrix multiply (SMMLA): faster INT8 GEMM again over dot product (ARMv8.6+)"),
    ("sve", "ARM SVE: scalable vectors; few INT8 kernels use it yet"),
)


_ARM_FLAGS = frozenset({"asimd", "asimddp", "i8mm", "sve"})


def cpu_features(cpuinfo: str | None = None) -> dict:
    """{"arch", "model", "flags_found": [...], "features": [{"flag", "present", "meaning"}]} from /proc/cpuinfo."""
    import platform  # noqa: PLC0415

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                cpuinfo = fh.read()
        except OSError:
            cpuinfo = ""
    flags: set = set()
    model = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    arm = bool(flags & {"asimd", "neon", "fp"}) and "avx" not in " ".join(flags)
    rows = []
    for flag, meaning in CPU_FEATURES:
        if (flag in _ARM_FLAGS) == arm:
            rows.append({"flag": flag, "present": flag in flags, "meaning": meaning})
    return {"arch": platform.machine(), "model": model, "cpus": os.cpu_count(), "features": rows}


def _find_library(names) -> str | None:
    import ctypes.util  # noqa: PLC0415

    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d] + list(_LIB_DIRS)
    for name in names:
        for d in dirs:
            p = os.path.join(d, name)
            if os.path.exists(p):
                return p
    for name in names:
        stem = name.split(".")[0].removeprefix("lib")
        found = ctypes.util.find_library(stem)
        if found and any(found.startswith(n.split(".")[0]) for n in names):
            return found
    return None


def _edgetpu_devices() -> list:
    found = []
    try:
        for dev in sorted(os.listdir("/sys/bus/usb/devices")):
            base = os.path.join("/sys/bus/usb/devices", dev)
            try:
                with open(os.path.join(base, "idVendor")) as a, open(os.path.join(base, "idProduct")) as b:
                    vid, pid = a.read().strip(), b.read().strip()
            except OSError:
                continue
            if (vid, pid) in (("1a6e", "089a"), ("18d1", "9302")):
                found.append(f"usb ({vid}:{pid}{', needs firmware: run once with libedgetpu' if vid == '1a6e' else ''})")
    except OSError:
        pass
    try:
        found += [f"pci (/dev/{n})" for n in sorted(os.listdir("/dev")) if n.startswith("apex_")]
    except OSError:
        pass
    return found


def _dlopen_check(path: str) -> None:
    """Raise OSError when ``path`` is not a loadable library (before ``load_delegate``,
    whose half-built ``Delegate`` object otherwise complains at garbage collection)."""
    import ctypes  # noqa: PLC0415

    ctypes.CDLL(path)


def _version(dist: str) -> str | None:
    try:
        from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def devices(try_load: bool = True, model: str | None = None) -> dict:
    """What this machine can run: interpreters, delegates, ONNX Runtime providers, CPU features, LiteRT GPU/NPU.

    Nothing is installed or downloaded; a delegate library is only loaded
    (``load_delegate``) when its file exists and ``try_load`` is True. With
    ``model`` (a ``.tflite`` file), LiteRT's CompiledModel is tried on each of
    its accelerators with that model (:func:`probe_compiled_model`).
    """
    import importlib  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415

    from .model import available_backends  # noqa: PLC0415

    dists = {"litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime", "tensorflow.lite": "tensorflow",
             "onnxruntime": "onnxruntime"}
    backends = []
    for name, (ok, why) in available_backends().items():
        ver = _version(dists.get(name, name))
        if name == "onnxruntime" and ver is None:
            ver = _version("onnxruntime-gpu")
        backends.append({"name": name, "available": ok, "version": ver if ok else None, "reason": why or None})

    load_delegate = None
    for mod in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
        try:
            load_delegate = importlib.import_module(mod).load_delegate
            break
        except ImportError:
            continue
    delegates = []
    for kind, names in _DELEGATE_LIBS.items():
        path = _find_library(names)
        entry = {"name": kind, "library": path, "found": path is not None, "usable": False, "reason": None}
        if path is None:
            entry["reason"] = f"{' / '.join(names)} not on the library path" + (
                "; install libedgetpu1-std (https://coral.ai/software)" if kind == "edgetpu" else
                "; build or install the TFLite GPU delegate (Android/Linux with OpenCL or OpenGL ES)")
        elif not try_load or load_delegate is None:
            entry["reason"] = "found; not loaded" if load_delegate else "found; no TFLite interpreter to load it"
        else:
            try:
                _dlopen_check(path)
                load_delegate(path)
                entry["usable"] = True
            except (ValueError, OSError, RuntimeError) as exc:
                msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                entry["reason"] = f"load_delegate failed: {msg}" + (" (no Edge TPU plugged in?)" if kind == "edgetpu" else "")
        if kind == "edgetpu":
            entry["devices"] = _edgetpu_devices()
        delegates.append(entry)

    ort = {"available": False, "version": None, "providers": [], "reason": None}
    if importlib.util.find_spec("onnxruntime") is not None:
        try:
            import onnxruntime  # noqa: PLC0415

            ort.update(available=True, version=onnxruntime.__version__,
                       providers=list(onnxruntime.get_available_providers()))
        except Exception as exc:  # noqa: BLE001
            ort["reason"] = f"onnxruntime cannot be imported: {exc}"
    else:
        ort["reason"] = 'not installed: pip install "edgeship[onnx]"'

    compiled = {"available": False, "accelerators": [], "reason": None}
    try:
        importlib.import_module("ai_edge_litert.compiled_model")
        hw = importlib.import_module("ai_edge_litert.hardware_accelerator")
        compiled.update(available=True, accelerators=[m.name for m in hw.HardwareAccelerator])
        compiled["reason"] = "CompiledModel API importable; GPU/NPU use needs the vendor runtime and a device"
    except Exception as exc:  # noqa: BLE001 - older LiteRT or none
        compiled["reason"] = f"ai_edge_litert.compiled_model not importable ({type(exc).__name__}: {exc})"

    if model is not None and compiled["available"]:
        compiled["probe"] = [probe_compiled_model(model, a.lower()) for a in compiled["accelerators"]]
    gpu = {"nvidia": os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version"),
           "jetson": os.path.exists("/etc/nv_tegra_release"),
           "dri_render_nodes": sorted(n for n in (os.listdir("/dev/dri") if os.path.isdir("/dev/dri") else ())
                                      if n.startswith("renderD"))}
    return {"tflite": [b for b in backends if b["name"] != "onnxruntime"], "delegates": delegates,
            "onnxruntime": ort, "litert_compiled_model": compiled, "gpu": gpu, "cpu": cpu_features()}


# -- TensorRT calibration table (FP32 ONNX run in INT8 by TensorRT) ------------------------------

TRT_TABLE = "calibration.flatbuffers"


def write_trt_calibration_table(onnx_path: str, x, out_dir: str, *, input_name: str | None = None,
                                max_samples: int = 500) -> str:
    """Write the TensorRT INT8 calibration table of an FP32 ONNX model; returns its path.

    ``x`` holds calibration samples (N, ...) in the ONNX model's own layout,
    fed one at a time. onnxruntime's calibrator (min/max over every tensor)
    computes the ranges and ``write_calibration_table`` writes
    ``calibration.flatbuffers`` (the table ONNX Runtime's TensorRT provider
    reads with ``trt_int8_calibration_table_name`` and
    ``trt_int8_use_native_calibration_table=False``), ``calibration.cache``
    (TensorRT's text form) and ``calibration.json`` into ``out_dir``. QDQ models
    need no table (TensorRT refuses one when Q/DQ nodes exist).

    Raises:
      InputError: ``x`` is empty or the model has several inputs and no ``input_name``.
      BackendUnavailableError: onnxruntime's quantization tools (they need the
        ``onnx`` package) are not installed.
    """
    import tempfile  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from ..errors import BackendUnavailableError  # noqa: PLC0415

    try:
        from onnxruntime.quantization import CalibrationDataReader, create_calibrator, write_calibration_table  # noqa: PLC0415
        from onnxruntime.quantization.calibrate import CalibrationMethod  # noqa: PLC0415
    except ImportError as exc:
        raise BackendUnavailableError(f"writing a TensorRT calibration table needs onnxruntime's quantization tools "
                                      f"and the onnx package ({exc}); pip install onnx onnxruntime") from None
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 0 or len(x) == 0:
        raise InputError("no calibration samples to build a TensorRT calibration table from")
    x = x[:max_samples]
    if input_name is None:
        import onnxruntime as ort  # noqa: PLC0415

        names = [i.name for i in ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"]).get_inputs()]
        if len(names) != 1:
            raise InputError(f"{os.path.basename(onnx_path)} has inputs {names}; pass input_name=")
        input_name = names[0]

    class _Reader(CalibrationDataReader):
        def __init__(self):
            self._i = 0

        def get_next(self):
            if self._i >= len(x):
                return None
            self._i += 1
            return {input_name: x[self._i - 1:self._i]}

    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeship-trt-") as tmp:
        cal = create_calibrator(onnx_path, augmented_model_path=os.path.join(tmp, "augmented.onnx"),
                                calibrate_method=CalibrationMethod.MinMax, providers=["CPUExecutionProvider"])
        try:
            cal.collect_data(_Reader())
            write_calibration_table(cal.compute_data(), dir=out_dir)
        finally:
            del cal
    return os.path.join(out_dir, TRT_TABLE)


def bundle_trt_calibration_table(bundle: str, out_dir: str, *, artifact: str | None = None) -> str:
    """:func:`write_trt_calibration_table` for a bundle's FP32 ONNX artifact and its ``calibration.npz``.

    The samples are stored in the source layout; they are transposed to the
    artifact's (NHWC <-> NCHW) when the manifest says they differ.

    Raises:
      BundleError: no FP32 ONNX artifact, or no ``calibration.npz``.
    """
    import numpy as np  # noqa: PLC0415

    from .. import bundle as _bundle  # noqa: PLC0415
    from .. import manifest as _manifest  # noqa: PLC0415
    from ..errors import BundleError  # noqa: PLC0415

    m = _manifest.read(bundle)
    arts = [a for a in m["artifacts"] if a["format"] == "onnx" and (artifact is None or a["file"] == artifact)]
    arts = [a for a in arts if a["precision"] == "fp32"] if artifact is None else arts
    if not arts:
        raise BundleError(f"{bundle} has no FP32 ONNX artifact to calibrate for TensorRT "
                          "(INT8 QDQ artifacts carry their own scales and need no table)")
    art = arts[0]
    cal = (m.get("calibration") or {}).get("file")
    if not cal or not os.path.isfile(os.path.join(bundle, cal)):
        raise BundleError(f"{bundle} has no calibration samples (calibration.npz); re-convert with --calib")
    with np.load(os.path.join(bundle, cal), allow_pickle=False) as z:
        x = np.asarray(z["x"], np.float32)
    src, dst = m["source"].get("layout"), art.get("layout")
    if x.ndim == 4 and (src, dst) == ("NHWC", "NCHW"):
        x = x.transpose(0, 3, 1, 2)
    elif x.ndim == 4 and (src, dst) == ("NCHW", "NHWC"):
        x = x.transpose(0, 2, 3, 1)
    path = _bundle.verify_file(bundle, art)
    name = (art.get("inputs") or [{}])[0].get("name") if len(art.get("inputs") or []) == 1 else None
    return write_trt_calibration_table(path, x, out_dir, input_name=name)


# -- LiteRT CompiledModel (GPU / NPU through LiteRT's accelerators) ---------------------------------


def _capture_fd2(fn):
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


_ACCEL_WORDS = {"gpu": ("gpu", "vulkan", "opencl", "opengl", "webgpu", "adapter", "metal"),
                "npu": ("npu", "dispatch", "qualcomm", "mediatek", "openvino", "neuron", "qnn"),
                "cpu": ("cpu", "xnnpack")}


def _accelerator_reason(accelerator: str, error: str, log: str) -> str:
    """The lines of an exception and a native log that say why ``accelerator`` failed."""
    def text(line: str) -> str:
        line = line.strip().lstrip("└").strip()
        return line.split("] ", 1)[1].strip() if "] " in line and line[:1] in "EWI" else line

    words = _ACCEL_WORDS.get(accelerator.lower(), ())
    picked = [text(ln) for ln in error.splitlines()]
    picked += [text(ln) for ln in log.splitlines()
               if any(w in ln.lower() for w in words) and not ln.lstrip().startswith(("INFO", "at ", "third_party"))
               and "DestroyAccelerator" not in ln and "Source Location" not in ln]
    picked = [p for p in dict.fromkeys(picked) if p and not p.startswith(("ERROR: [", "WARNING: ["))]
    return ("; ".join(picked) or error.strip() or "failed without a message")[:600]


def probe_compiled_model(model_path: str, accelerator: str = "gpu") -> dict:
    """Can LiteRT's CompiledModel run ``model_path`` on ``accelerator`` (cpu, gpu, npu) here?

    Returns ``{"accelerator", "usable", "fully_accelerated", "reason"}``:
    ``fully_accelerated`` is CompiledModel's ``is_fully_accelerated()`` (every
    op on that accelerator); ``reason`` says why not, with the accelerator's own
    log line (e.g. "Failed to initialize WebGPU environment") when it gave one.
    The accelerator is asked alone: LiteRT refuses a graph it cannot take whole
    unless the CPU is added, which is what a silent fallback would be.
    """
    try:
        from ai_edge_litert.compiled_model import CompiledModel  # noqa: PLC0415
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator  # noqa: PLC0415
    except ImportError as exc:
        return {"accelerator": accelerator, "usable": False, "fully_accelerated": None,
                "reason": f"ai_edge_litert.compiled_model is not importable ({exc}); pip install -U ai-edge-litert"}
    try:
        acc = HardwareAccelerator[accelerator.upper()]
    except KeyError:
        raise InputError(f"accelerator {accelerator!r} is not one of "
                         f"{[m.name.lower() for m in HardwareAccelerator]}") from None
    cm, error, log = _capture_fd2(lambda: CompiledModel.from_file(os.fspath(model_path), hardware_accel=acc))
    if error is not None:
        return {"accelerator": accelerator, "usable": False, "fully_accelerated": False,
                "reason": _accelerator_reason(accelerator, str(error), log)}
    try:
        full = bool(cm.is_fully_accelerated())
    finally:
        del cm
    return {"accelerator": accelerator, "usable": True, "fully_accelerated": full,
            "reason": None if full else "some ops are not on this accelerator"}
