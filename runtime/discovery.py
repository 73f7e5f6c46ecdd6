"""What this machine can run: interpreters, delegates, ONNX Runtime providers, OpenVINO devices, CPU features,
LiteRT GPU/NPU.

The top floor of the runtime: it asks every lower module (the backend
registry, the delegates, CompiledModel) and nothing below imports it. Nothing
is installed or downloaded; engines are imported only inside :func:`devices`.
"""

from __future__ import annotations

import os

from .backends.compiled_model import probe_compiled_model
from .backends.delegates import EDGETPU_LIBS, GPU_LIBS, dlopen_check
from .backends.registry import available_backends

__all__ = ["CPU_FEATURES", "cpu_features", "devices", "edgetpu_devices", "find_library", "probe_compiled_model"]

# -- what this machine can run --------------------------------------------------------------

_DELEGATE_LIBS = {"edgetpu": EDGETPU_LIBS, "gpu": GPU_LIBS}
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


def find_library(names) -> str | None:
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


def edgetpu_devices() -> list:
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
        path = find_library(names)
        entry = {"name": kind, "library": path, "found": path is not None, "usable": False, "reason": None}
        if path is None:
            entry["reason"] = f"{' / '.join(names)} not on the library path" + (
                "; install libedgetpu1-std (https://coral.ai/software)" if kind == "edgetpu" else
                "; build or install the TFLite GPU delegate (Android/Linux with OpenCL or OpenGL ES)")
        elif not try_load or load_delegate is None:
            entry["reason"] = "found; not loaded" if load_delegate else "found; no TFLite interpreter to load it"
        else:
            try:
                dlopen_check(path)
                load_delegate(path)
                entry["usable"] = True
            except (ValueError, OSError, RuntimeError) as exc:
                msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
                entry["reason"] = f"load_delegate failed: {msg}" + (" (no Edge TPU plugged in?)" if kind == "edgetpu" else "")
        if kind == "edgetpu":
            entry["devices"] = edgetpu_devices()
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
    from .backends.openvino import ov_devices  # noqa: PLC0415 - imports openvino only when installed

    return {"tflite": [b for b in backends if b["name"] not in ("onnxruntime", "openvino")], "delegates": delegates,
            "onnxruntime": ort, "openvino": ov_devices(), "litert_compiled_model": compiled, "gpu": gpu,
            "cpu": cpu_features()}
