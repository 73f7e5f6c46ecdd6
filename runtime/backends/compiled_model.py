"""LiteRT CompiledModel backend: ``.tflite`` files through LiteRT's accelerator API.

``ai_edge_litert.compiled_model.CompiledModel`` is how LiteRT intends a GPU or
NPU to be reached (``HardwareAccelerator.GPU`` / ``NPU``; the GPU path is
WebGPU over Vulkan/Metal/D3D, the NPU path needs a vendor dispatch library).
It is registered below the interpreter backends, so ``load()`` picks it only
when asked: ``load(path, backend="litert_compiled", device="gpu")``.

``device``: ``None``/``"cpu"`` -> ``CPU`` (XNNPACK), ``"gpu"`` -> ``GPU``,
``"npu"`` -> ``NPU``. The accelerator is asked *alone*: LiteRT refuses a graph
it cannot take whole unless the CPU is added, and adding it would hide a model
that runs almost entirely on the CPU. When the accelerator cannot be used, the
model is compiled for the CPU instead with a warning, ``info.fallback`` set and
LiteRT's own reason (e.g. "Couldn't load Vulkan ...; No adapters found") in
``info.skipped``; ``strict=True`` raises :class:`FallbackError` instead.
``info.fully_accelerated`` is CompiledModel's ``is_fully_accelerated()``.

Limits: the CompiledModel API does not expose quantization parameters, so they
are read once with LiteRT's Interpreter on the same file; batches run one
sample at a time (the Python API does not resize output buffers with the
input, so ``resize_batch`` only accepts the compiled batch).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ...errors import BackendUnavailableError, FallbackError, InputError
from ...vocab import DeviceKind
from .base import Backend, ExecutionInfo, ModelSource, as_source, capture_fd2, closed_error
from .options import options_for, CompiledModelOptions

_log = logging.getLogger("edgeship.runtime")

__all__ = ["CompiledModelBackend", "CompiledModelInfo", "accelerator_reason", "capture_fd2", "probe_compiled_model"]

_DEVICES = {DeviceKind.CPU: "CPU", DeviceKind.GPU: "GPU", DeviceKind.NPU: "NPU"}


@dataclass(frozen=True)
class CompiledModelInfo(ExecutionInfo):
    """:class:`ExecutionInfo` plus CompiledModel's ``is_fully_accelerated()``."""

    fully_accelerated: bool | None = None
    accelerator: str = "cpu"  # the accelerator set the model was compiled for


class CompiledModelBackend(Backend):
    """Runs a ``.tflite`` file with ``CompiledModel`` (not thread-safe: the Model locks)."""

    name = "litert_compiled"
    formats = ("tflite",)
    thread_safe = False
    options_type = CompiledModelOptions

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            import ai_edge_litert.compiled_model  # noqa: F401, PLC0415
        except ImportError as exc:
            return False, (f"{cls.name}: ai_edge_litert.compiled_model cannot be imported "
                           f"({exc.__class__.__name__}: {exc}); pip install -U ai-edge-litert")
        return True, ""

    def __init__(self, source: ModelSource | str, options: CompiledModelOptions | None = None) -> None:
        source = as_source(source)
        options = options_for(options, CompiledModelOptions, self.name,  # TFLiteOptions keep their delegates
                              delegates=getattr(options, "delegates", ()))
        try:
            import ai_edge_litert  # noqa: PLC0415
            from ai_edge_litert.compiled_model import CompiledModel  # noqa: PLC0415
            from ai_edge_litert.hardware_accelerator import HardwareAccelerator  # noqa: PLC0415
            from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
            from ai_edge_litert.options import CpuOptions, Options  # noqa: PLC0415
        except ImportError as exc:
            raise BackendUnavailableError(f"{self.name}: cannot import ai_edge_litert.compiled_model: {exc}") from None
        from .tflite import format_error, raw_tensor  # noqa: PLC0415 - only when this backend is used

        path, threads, strict = source.path, options.threads, options.strict
        self._label = path
        kind = options.device.kind if options.device is not None else DeviceKind.CPU
        if kind not in _DEVICES:
            raise InputError(f"device {str(options.device)!r} is not known to the {self.name} backend; expected "
                             "'cpu', 'gpu' or 'npu'")
        skipped: list = []
        fallback = False
        if options.delegates:  # TFLite delegate libraries do not apply to CompiledModel
            names = [getattr(d, "library", d) for d in options.delegates]
            why = (f"delegates {names}: the {self.name} backend takes accelerators (device='gpu'/'npu'), "
                   "not TFLite delegates")
            if strict:
                raise FallbackError(f"{why}; strict=True forbids running without them")
            _log.warning("%s; running without them", why)
            skipped.append(why)
            fallback = True

        # Quantization parameters and the file's own shapes: from the interpreter, once.
        try:
            interp = Interpreter(model_content=source.data)
        except (ValueError, RuntimeError) as exc:
            raise format_error(path, exc) from None
        in_raw = {str(d["name"]): raw_tensor(d) for d in interp.get_input_details()}
        out_raw = {str(d["name"]): raw_tensor(d) for d in interp.get_output_details()}
        in_order = [str(d["name"]) for d in interp.get_input_details()]
        out_order = [str(d["name"]) for d in interp.get_output_details()]
        del interp

        # CompiledModel may point into the buffer instead of copying it: keep the bytes alive with it.
        self._model_data = source.data

        def compile_for(acc_name: str):
            acc = HardwareAccelerator[acc_name]
            cpu = CpuOptions(num_threads=int(threads)) if threads is not None else None
            opts = Options(hardware_accelerators=acc, cpu_options=cpu)
            return capture_fd2(lambda: CompiledModel.from_buffer(source.data, options=opts))

        wanted = _DEVICES[kind]
        cm, error, log = compile_for(wanted)
        used = wanted
        if error is not None and wanted != "CPU":
            why = f"{wanted.lower()}: {accelerator_reason(wanted.lower(), str(error), log)}"
            if strict:
                raise FallbackError(f"{self.name}: the {wanted} accelerator cannot run {os.path.basename(path)} "
                                    f"({why}); strict=True forbids running on the CPU instead")
            _log.warning("%s: the %s accelerator cannot run %s (%s); running on the CPU instead",
                         self.name, wanted, os.path.basename(path), why)
            skipped.append(why)
            fallback = True
            cm, error, log = compile_for("CPU")
            used = "CPU"
        if error is not None:
            raise format_error(path, error)
        self._cm = cm

        sig_key = next(iter(cm.get_signature_list()))
        self._sig_index = max(int(cm.get_signature_index(sig_key)), 0)
        cm_in = cm.get_input_tensor_details(sig_key)  # {signature name: {name, index, dtype, shape}}
        cm_out = cm.get_output_tensor_details(sig_key)
        # Buffers follow the signature's order; the Model wants the file's (interpreter's) order.
        sig_in = [str(v["name"]) for v in cm_in.values()]
        sig_out = [str(v["name"]) for v in cm_out.values()]
        if sorted(sig_in) != sorted(in_order) or sorted(sig_out) != sorted(out_order):
            raise ModelFormatError(f"{path}: CompiledModel signature {sig_key!r} tensors {sig_in} -> {sig_out} do not "
                                   f"match the graph's {in_order} -> {out_order}")
        self._in_pos = [sig_in.index(n) for n in in_order]  # file input i -> buffer position
        self._out_pos = [sig_out.index(n) for n in out_order]
        self._in_shapes = [tuple(int(s) for s in v["shape"]) for v in cm_in.values()]
        self._out_shapes = [tuple(int(s) for s in v["shape"]) for v in cm_out.values()]
        self._out_dtypes = [np.dtype(v["dtype"]) for v in cm_out.values()]
        self._out_sizes = [int(np.prod(s)) for s in self._out_shapes]
        self._in_buffers = cm.create_input_buffers(self._sig_index)
        self._out_buffers = cm.create_output_buffers(self._sig_index)
        self.inputs = [in_raw[n] for n in in_order]
        self.outputs = [out_raw[n] for n in out_order]
        self._batch = self._in_shapes[0][0] if self._in_shapes and self._in_shapes[0] else None

        self.fully_accelerated = bool(cm.is_fully_accelerated())
        self.accelerator = used.lower()
        self.info = CompiledModelInfo(
            backend=self.name,
            engine_version=getattr(ai_edge_litert, "__version__", "") or "",
            device=used.lower(),
            delegate=f"CompiledModel:{used}",
            threads=threads,
            skipped=skipped,
            fallback=fallback,
            fully_accelerated=self.fully_accelerated,
            accelerator=used.lower(),
        )

    # -- running ---------------------------------------------------------------------

    def invoke(self, arrays: list) -> list:
        cm = self._cm
        if cm is None:
            raise closed_error(self._label)
        for arr, pos in zip(arrays, self._in_pos):
            arr = np.asarray(arr)
            want = self._in_shapes[pos]
            if arr.size != int(np.prod(want)):
                raise InputError(f"{self.name}: input of shape {arr.shape} does not fit the compiled shape {want}")
            self._in_buffers[pos].write(np.ascontiguousarray(arr))
        cm.run_by_index(self._sig_index, self._in_buffers, self._out_buffers)
        outs = []
        for pos in self._out_pos:
            data = self._out_buffers[pos].read(self._out_sizes[pos], self._out_dtypes[pos])
            outs.append(data.reshape(self._out_shapes[pos]))
        return outs

    def resize_batch(self, batch: int) -> bool:
        """Only the compiled batch: CompiledModel's Python buffers do not follow an input resize."""
        return batch == self._batch

    @property
    def batch(self) -> int | None:
        return self._batch

    def close(self) -> None:
        for b in list(getattr(self, "_in_buffers", ())) + list(getattr(self, "_out_buffers", ())):
            try:
                b.destroy()
            except Exception:  # noqa: BLE001 - best effort
                pass
        self._in_buffers = self._out_buffers = []
        cm, self._cm = getattr(self, "_cm", None), None
        if cm is not None:
            cm.close()


# -- probing an accelerator (used by edgeship.runtime.discovery) ------------------------------------


_ACCEL_WORDS = {"gpu": ("gpu", "vulkan", "opencl", "opengl", "webgpu", "adapter", "metal"),
                "npu": ("npu", "dispatch", "qualcomm", "mediatek", "openvino", "neuron", "qnn"),
                "cpu": ("cpu", "xnnpack")}


def accelerator_reason(accelerator: str, error: str, log: str) -> str:
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
    cm, error, log = capture_fd2(lambda: CompiledModel.from_file(os.fspath(model_path), hardware_accel=acc))
    if error is not None:
        return {"accelerator": accelerator, "usable": False, "fully_accelerated": False,
                "reason": accelerator_reason(accelerator, str(error), log)}
    try:
        full = bool(cm.is_fully_accelerated())
    finally:
        del cm
    return {"accelerator": accelerator, "usable": True, "fully_accelerated": full,
            "reason": None if full else "some ops are not on this accelerator"}
