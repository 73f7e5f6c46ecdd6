"""Open an untrusted model file in a child process first.

TensorFlow Lite's and ONNX Runtime's own security policies say a model file is
a program, and a malformed one can crash (or hang) the interpreter that reads
it. :func:`probe_model` loads the file with :func:`edgeship.runtime.load` and
runs one all-zero input in a separate Python process; a crash (signal), a hang
(timeout) or an error there becomes a typed :class:`~edgeship.errors.EdgeshipError`
here, and the calling process never touched the bytes with an engine.

Use it before opening a file you did not produce::

    from edgeship.isolate import probe_model
    import edgeship.runtime as rt

    info = probe_model("downloaded.tflite")      # raises ModelFormatError on a crash
    model = rt.load("downloaded.tflite")         # now in-process

or ``rt.load(path, isolate=True)``, which does the same. The CLI's ``run`` and
``inspect`` probe bare ``.tflite``/``.onnx`` files this way (bundles written by
``edgeship convert`` are checked by sha256 against their manifest instead).
``EDGESHIP_ISOLATE=0`` turns the CLI's probe off (e.g. on a device too small to
start a second interpreter).

The child is ``python -I -m edgeship.isolate PATH`` (isolated mode, see
:func:`python_command`: nothing is imported from the working directory): it prints one JSON line
(``{"ok": true, ...}`` or ``{"ok": false, "error": "<class name>", "message": ...}``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from . import errors as _errors
from .errors import EdgeshipError, InputError, ModelFormatError

__all__ = ["probe_model", "probe_if_bare", "isolation_enabled", "python_command", "child_env"]

# A mutated file can declare an input of billions of elements; the probe refuses
# to allocate a zero input larger than this (elements) and reports it instead.
MAX_PROBE_ELEMENTS = 64 * 1024 * 1024
_MARK = "EDGESHIP-PROBE:"


def isolation_enabled() -> bool:
    """False when ``EDGESHIP_ISOLATE`` is ``0``/``false``/``no`` (default: on)."""
    return os.environ.get("EDGESHIP_ISOLATE", "1").strip().lower() not in ("0", "false", "no", "off")


def python_command() -> list[str]:
    """``[python, flags]`` for a Python child of edgeship that cannot import from the working directory.

    ``-I`` (isolated mode): the working directory and the script's folder are not on
    ``sys.path``, ``PYTHON*`` variables and the user site are ignored, so a folder
    ``edgeship/`` (or a file ``edgeship.py``, ``numpy.py``, ``sitecustomize.py``) beside a
    downloaded model is never imported. The interpreter's site-packages stay, with their
    ``.pth`` files: the editable install's finder is one of those. When ``PYTHONPATH`` is
    set (an engine installed outside site-packages on a device, a source checkout), the
    child gets ``-P -s`` instead (Python >= 3.11): the working directory is still not on
    ``sys.path``, and :func:`child_env` keeps only the absolute ``PYTHONPATH`` entries.
    """
    if _pythonpath_entries() and sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-s"]
    return [sys.executable, "-I"]


def _pythonpath_entries() -> list[str]:
    return [e for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e and os.path.isabs(e)]


def child_env(env: dict | None = None) -> dict:
    """``env`` (default: this process's) for a child started with :func:`python_command`.

    Relative and empty ``PYTHONPATH`` entries (``""``, ``.``: the working directory) are dropped.
    """
    env = dict(os.environ if env is None else env)
    kept = _pythonpath_entries()
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        env.pop("PYTHONPATH", None)
    return env


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except (ValueError, AttributeError):
        return f"signal {-rc}"


def _error_class(name: str) -> type:
    cls = getattr(_errors, name, None)
    if isinstance(cls, type) and issubclass(cls, EdgeshipError):
        return cls
    if name in ("ModelNotFoundError", "ModelClosedError"):
        from .runtime import model as _model  # noqa: PLC0415

        return getattr(_model, name)
    return ModelFormatError


def probe_model(path, *, timeout: float = 30, backend: str | None = None, threads: int | None = 1,
                artifact: str | None = None) -> dict:
    """Load ``path`` and run one zero input in a child process; return what it saw.

    Args:
      path: A bare ``.tflite``/``.onnx`` file (a bundle folder works too).
      timeout: Seconds before the child is killed and the file called a hang.
      backend: Passed to :func:`edgeship.runtime.load` in the child.
      threads: Engine threads in the child (default 1: a probe, not a benchmark).
      artifact: Bundle folders only: the artifact to probe (as in ``load``).

    Returns:
      ``{"ok": True, "backend": str, "inputs": [...], "outputs": [...],
      "load_s": float, "run_s": float, "peak_rss_kb": int, "wall_s": float}``.

    Raises:
      ModelFormatError: the child crashed (the message names the signal, e.g.
        ``SIGSEGV``), did not finish within ``timeout``, or printed nothing.
      EdgeshipError: the typed error the child raised (``ModelFormatError``,
        ``UnsafeModelError``, ``UnsupportedModelError``, ``IntegrityError``...),
        re-raised here with the child's message.
      InputError: ``timeout`` is not positive.
    """
    path = os.fspath(path)
    if not timeout or timeout <= 0:
        raise InputError(f"timeout must be a positive number of seconds, got {timeout!r}")
    cmd = python_command() + ["-m", "edgeship.isolate", os.path.abspath(path)]
    if backend:
        cmd += ["--backend", backend]
    if threads:
        cmd += ["--threads", str(int(threads))]
    if artifact:
        cmd += ["--artifact", artifact]
    env = child_env()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env["EDGESHIP_ISOLATE"] = "0"  # the child must not probe again
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise ModelFormatError(
            f"{path}: loading or running the model did not finish within {timeout:g} s in a child process "
            "(killed); the file may be malformed or hostile") from None
    wall = time.perf_counter() - t0
    result = None
    for line in proc.stdout.decode("utf-8", "replace").splitlines()[::-1]:
        if line.startswith(_MARK):
            try:
                result = json.loads(line[len(_MARK):])
            except ValueError:
                result = None
            break
    if proc.returncode < 0:
        raise ModelFormatError(
            f"{path}: the model crashed the interpreter ({_signal_name(proc.returncode)}) in a child process; "
            "the file is malformed or hostile and was not opened here")
    if result is None:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise ModelFormatError(
            f"{path}: the child process that opened the model exited with code {proc.returncode} "
            f"without a result ({tail[0][:200]})")
    if not result.get("ok"):
        cls = _error_class(result.get("error", ""))
        raise cls(result.get("message") or f"{path}: the model could not be opened")
    result["wall_s"] = round(wall, 4)
    return result


def probe_if_bare(path, *, timeout: float = 30) -> dict | None:
    """Probe ``path`` in a child process when it is a bare model file and isolation is on.

    The CLI calls this before ``run``/``inspect`` open a file in-process. Bundle
    folders (sha256-checked against their manifest), missing paths (the normal
    load reports them) and ``EDGESHIP_ISOLATE=0`` return ``None`` without a child.
    """
    path = os.fspath(path)
    if not isolation_enabled() or not os.path.isfile(path):
        return None
    return probe_model(path, timeout=timeout)


# -- the child ------------------------------------------------------------------------


def _zero_inputs(model) -> dict:
    import numpy as np  # noqa: PLC0415

    feeds = {}
    for spec in model.inputs:
        shape = tuple(1 if (d is None or int(d) < 1) else int(d) for d in spec.shape)
        n = 1
        for d in shape:
            n *= d
        if n > MAX_PROBE_ELEMENTS:
            raise ModelFormatError(f"input {spec.name!r} declares shape {list(spec.shape)} "
                                   f"({n} elements); refusing to allocate it")
        feeds[spec.name] = np.zeros(shape, np.float32)
    return feeds


def _child(argv: list[str]) -> int:
    import argparse  # noqa: PLC0415
    import resource  # noqa: PLC0415

    ap = argparse.ArgumentParser(prog="python -m edgeship.isolate")
    ap.add_argument("path")
    ap.add_argument("--backend")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--artifact")
    args = ap.parse_args(argv)

    def peak_rss_kb() -> int:
        # VmHWM belongs to this process image; ru_maxrss would include the parent's peak
        # (Linux keeps the pre-exec high-water mark across fork+exec).
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    def emit(obj):
        obj["peak_rss_kb"] = peak_rss_kb()
        sys.stdout.write(_MARK + json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    try:
        from edgeship import runtime  # noqa: PLC0415

        t0 = time.perf_counter()
        model = runtime.load(args.path, artifact=args.artifact, backend=args.backend, threads=args.threads)
        t1 = time.perf_counter()
        with model:
            model.run(_zero_inputs(model))
            t2 = time.perf_counter()
            emit({"ok": True, "backend": model.info.backend,
                  "inputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in model.inputs],
                  "outputs": [{"name": s.name, "shape": list(s.shape), "dtype": str(s.dtype)} for s in model.outputs],
                  "load_s": round(t1 - t0, 4), "run_s": round(t2 - t1, 4)})
        return 0
    except EdgeshipError as exc:
        emit({"ok": False, "error": type(exc).__name__, "message": str(exc)})
        return 2
    except MemoryError:
        emit({"ok": False, "error": "ModelFormatError",
              "message": f"{args.path}: running the model ran out of memory; the file declares sizes it cannot have"})
        return 2
    except Exception as exc:  # an engine error that escaped the backend's typing
        emit({"ok": False, "error": "ModelFormatError",
              "message": f"{args.path}: the model could not be run: {type(exc).__name__}: {str(exc)[:300]}"})
        return 2


if __name__ == "__main__":  # pragma: no cover - exercised through probe_model
    sys.exit(_child(sys.argv[1:]))
