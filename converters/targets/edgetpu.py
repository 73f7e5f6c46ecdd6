"""The Edge TPU compile step: run ``edgetpu_compiler`` on a full-INT8 TFLite model.

When ``edgetpu_compiler`` is on ``PATH`` it is run with an argument list
(never a shell), its exit status is checked and its stderr shown on failure;
its operation log (``*_edgetpu.log``, same format as ``--show_operations``) is
parsed into how many ops were mapped to the Edge TPU and how many stay on the
CPU, and the compiled model is stored as ``model_edgetpu.tflite``. Without the
compiler (it exists for x86-64 Debian/Ubuntu only) the INT8 model is ready and
:func:`compile_command` gives the exact command to run where it is installed.

The log format, as the compiler writes it::

    Edge TPU Compiler version 16.0.384591198
    Input: model.int8.tflite
    Output: model.int8_edgetpu.tflite

    Operator                       Count      Status

    CONV_2D                        2          Mapped to Edge TPU
    SOFTMAX                        1          Operation is otherwise supported, but not mapped due to some unspecified limitation

and on stdout, among other lines, ``Number of Edge TPU subgraphs: 1``,
``Total number of operations: 12``, ``Number of operations that will run on
Edge TPU: 11``, ``Number of operations that will run on CPU: 1``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from edgeship.errors import EdgeshipError

__all__ = ["COMPILER", "OUTPUT_FILE", "EdgeTPUCompileError", "EdgeTPUResult", "compile_command", "find_compiler",
           "parse_log", "compile_model"]

COMPILER = "edgetpu_compiler"
OUTPUT_FILE = "model_edgetpu.tflite"
MAPPED = "Mapped to Edge TPU"
INSTALL_HINT = ("install it on an x86-64 Debian/Ubuntu machine: `sudo apt-get install edgetpu-compiler` "
                "(https://coral.ai/docs/edgetpu/compiler/)")


class EdgeTPUCompileError(EdgeshipError, RuntimeError):
    """``edgetpu_compiler`` failed (non-zero exit status or no output model)."""


@dataclass(frozen=True)
class EdgeTPUResult:
    """What the compile step did and what the compiler reported."""

    compiled: bool
    command: tuple  # the argument list (run, or to run elsewhere)
    output: str | None = None  # path of model_edgetpu.tflite when compiled
    version: str | None = None
    ops_total: int | None = None
    ops_edgetpu: int | None = None
    ops_cpu: int | None = None
    subgraphs: int | None = None
    operators: tuple = ()  # ({"op", "count", "status", "mapped"}, ...)
    log: str = ""
    notes: tuple = field(default_factory=tuple)

    def to_manifest(self) -> dict:
        """The ``edgetpu`` record stored in the manifest."""
        return {"compiled": self.compiled, "command": list(self.command), "compiler_version": self.version,
                "ops_total": self.ops_total, "ops_edgetpu": self.ops_edgetpu, "ops_cpu": self.ops_cpu,
                "subgraphs": self.subgraphs, "operators": [dict(o) for o in self.operators]}


def find_compiler() -> str | None:
    return shutil.which(COMPILER)


def compile_command(model_path: str, out_dir: str, *, compiler: str = COMPILER, min_runtime: int | None = None) -> list:
    """The argument list that compiles ``model_path`` into ``out_dir``."""
    cmd = [compiler, "--show_operations", "--out_dir", out_dir]
    if min_runtime is not None:
        cmd += ["--min_runtime_version", str(int(min_runtime))]
    return cmd + [model_path]


_ROW = re.compile(r"^(?P<op>[A-Z][A-Z0-9_]*)\s+(?P<count>\d+)\s+(?P<status>\S.*?)\s*$")
_NUMBERS = {
    "subgraphs": re.compile(r"Number of Edge TPU subgraphs:\s*(\d+)"),
    "ops_total": re.compile(r"Total number of operations:\s*(\d+)"),
    "ops_edgetpu": re.compile(r"Number of operations that will run on Edge TPU:\s*(\d+)"),
    "ops_cpu": re.compile(r"Number of operations that will run on CPU:\s*(\d+)"),
}
_VERSION = re.compile(r"Edge TPU Compiler version\s+(\S+)")


def parse_log(text: str) -> dict:
    """Figures from a compiler log and/or its stdout.

    Returns ``{"version", "operators": [{"op", "count", "status", "mapped"}],
    "ops_total", "ops_edgetpu", "ops_cpu", "subgraphs"}``. Totals the
    compiler printed win; otherwise they are summed from the operator table
    (``subgraphs`` stays ``None`` when not printed).
    """
    operators = []
    in_table = False
    for line in text.splitlines():
        if re.match(r"^\s*Operator\s+Count\s+Status\s*$", line):
            in_table = True
            continue
        if not in_table or not line.strip():
            continue
        m = _ROW.match(line.strip())
        if m is None:
            in_table = False
            continue
        status = m.group("status")
        operators.append({"op": m.group("op"), "count": int(m.group("count")), "status": status,
                          "mapped": status.startswith(MAPPED)})
    out = {"version": None, "operators": operators, "ops_total": None, "ops_edgetpu": None, "ops_cpu": None,
           "subgraphs": None}
    v = _VERSION.search(text)
    if v:
        out["version"] = v.group(1).rstrip(".")
    for key, rx in _NUMBERS.items():
        m = rx.search(text)
        if m:
            out[key] = int(m.group(1))
    if operators:
        mapped = sum(o["count"] for o in operators if o["mapped"])
        cpu = sum(o["count"] for o in operators if not o["mapped"])
        if out["ops_edgetpu"] is None:
            out["ops_edgetpu"] = mapped
        if out["ops_cpu"] is None:
            out["ops_cpu"] = cpu
        if out["ops_total"] is None:
            out["ops_total"] = mapped + cpu
    elif out["ops_total"] is not None and out["ops_edgetpu"] is not None and out["ops_cpu"] is None:
        out["ops_cpu"] = out["ops_total"] - out["ops_edgetpu"]
    return out


def compile_model(model_path: str, out_dir: str, *, compiler: str | None = None, timeout: float = 600.0,
                  min_runtime: int | None = None) -> EdgeTPUResult:
    """Compile ``model_path`` for the Edge TPU into ``out_dir/model_edgetpu.tflite``.

    Without a compiler on ``PATH`` nothing is run: the result has
    ``compiled=False`` and the ``command`` to run on a machine that has one
    (with ``out_dir`` replaced by ``.``, as a user would type it).

    Raises:
      EdgeTPUCompileError: the compiler exits non-zero (its stderr in the
        message), times out, or writes no ``*_edgetpu.tflite``.
    """
    exe = compiler or find_compiler()
    stem = os.path.splitext(os.path.basename(model_path))[0]
    if exe is None:
        cmd = compile_command(os.path.basename(model_path), ".")
        return EdgeTPUResult(compiled=False, command=tuple(cmd),
                             notes=(f"{COMPILER} is not on PATH: the INT8 model {os.path.basename(model_path)} is "
                                    f"ready; compile it with `{' '.join(cmd)}` ({INSTALL_HINT}) and ship "
                                    f"{stem}_edgetpu.tflite as {OUTPUT_FILE}",))
    os.makedirs(out_dir, exist_ok=True)
    cmd = compile_command(model_path, out_dir, compiler=exe, min_runtime=min_runtime)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise EdgeTPUCompileError(f"{COMPILER} did not finish within {timeout:.0f} s: {' '.join(cmd)}") from None
    except OSError as exc:
        raise EdgeTPUCompileError(f"cannot run {exe}: {exc}") from None
    if proc.returncode != 0:
        err = (proc.stderr or proc.stdout or "").strip()
        tail = "\n".join(err.splitlines()[-15:]) or "(no output)"
        raise EdgeTPUCompileError(f"{COMPILER} failed with exit status {proc.returncode} on "
                                  f"{os.path.basename(model_path)}:\n{tail}")
    produced = os.path.join(out_dir, f"{stem}_edgetpu.tflite")
    if not os.path.isfile(produced):
        raise EdgeTPUCompileError(f"{COMPILER} exited 0 but wrote no {stem}_edgetpu.tflite in {out_dir}; "
                                  f"its output was:\n{(proc.stdout or '').strip()[-2000:]}")
    log_path = os.path.join(out_dir, f"{stem}_edgetpu.log")
    log = ""
    if os.path.isfile(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            log = fh.read()
    # The operator table is in the log and (with --show_operations) on stdout too: take it once,
    # from the log when there is one; the summary lines (subgraphs, totals) are only on stdout.
    printed = parse_log(proc.stdout or "")
    figures = parse_log(log) if log.strip() else printed
    for key in ("version", "subgraphs", "ops_total", "ops_edgetpu", "ops_cpu"):
        if printed[key] is not None:
            figures[key] = printed[key]
    final = os.path.join(out_dir, OUTPUT_FILE)
    if os.path.abspath(produced) != os.path.abspath(final):
        os.replace(produced, final)
    if os.path.isfile(log_path):
        os.remove(log_path)  # its content is in the manifest
    notes = []
    if figures["ops_cpu"]:
        notes.append(f"Edge TPU: {figures['ops_cpu']} of {figures['ops_total']} ops stay on the CPU "
                     f"({', '.join(sorted({o['op'] for o in figures['operators'] if not o['mapped']})) or 'see log'}); "
                     "each switch between the Edge TPU and the CPU costs a round trip")
    if (figures["subgraphs"] or 0) > 1:
        notes.append(f"Edge TPU: the model was split into {figures['subgraphs']} Edge TPU subgraphs")
    return EdgeTPUResult(compiled=True, command=tuple(cmd), output=final, version=figures["version"],
                         ops_total=figures["ops_total"], ops_edgetpu=figures["ops_edgetpu"],
                         ops_cpu=figures["ops_cpu"], subgraphs=figures["subgraphs"],
                         operators=tuple(figures["operators"]), log=log, notes=tuple(notes))


def step(ctx) -> dict:
    """The convert() target step: compile the INT8 TFLite artifact when ``edgetpu_compiler`` is on PATH.

    Adds ``model_edgetpu.tflite`` as an artifact (targets ``["edgetpu"]``) when it compiled,
    else records the exact command to run in a warning. Returns the manifest record
    (``settings.edgetpu``).

    Raises:
      EdgeTPUCompileError: the compiler failed (nothing is written).
    """
    artifacts, w, warnings = ctx.artifacts, ctx.writer, ctx.warnings
    src = next(a for a in artifacts if a["format"] == "tflite" and a["precision"] == "int8")
    res = compile_model(w.path(src["file"]), w.dir)
    record = res.to_manifest()
    record["source_artifact"] = src["file"]
    if not res.compiled:
        record["command"] = list(res.command)
        warnings.extend(res.notes)
        return record
    entry = {k: v for k, v in src.items() if k not in ("sha256", "bytes", "gzip_bytes", "notes", "file")}
    entry.update(file=OUTPUT_FILE, targets=["edgetpu"], **w.file_info(OUTPUT_FILE))
    entry["notes"] = [f"compiled by edgetpu_compiler {res.version or ''} from {src['file']}: "
                      f"{res.ops_edgetpu} of {res.ops_total} ops on the Edge TPU, {res.ops_cpu} on the CPU, "
                      f"{res.subgraphs if res.subgraphs is not None else '?'} Edge TPU subgraph(s)", *res.notes]
    entry["edgetpu"] = record
    src["targets"] = [t for t in src["targets"] if t != "edgetpu"] or ["cpu"]
    artifacts.append(entry)
    warnings.extend(n for n in res.notes if "stay on the CPU" in n)
    return record
