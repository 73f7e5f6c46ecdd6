"""What every ``edgeship`` command shares: JSON on stdout, tables, path checks,
argument types, the accelerator options and errors in the words of the CLI.

Conventions (all commands): exit 0 done, 2 the user's mistake (one line
``edgeship: error: ...`` on stderr, and with ``--json`` also one JSON object
``{"error": ..., "exit_code": 2}`` on stdout), 1 an internal error.
``--json`` prints exactly one JSON object on stdout; progress and logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from typing import Sequence

from ..errors import EdgeshipError, InputError, UsageError
from ..vocab import Device

__all__ = [
    "Parser", "UsageError", "WarningHandler", "add_accel_arguments", "cli_message", "cli_warnings", "describe_info",
    "device_arg", "emit_error", "emit_json", "flags_of", "fmt_bytes", "int_at_least", "load_kwargs", "num", "pct",
    "quiet_tf_env", "require_path", "stdout_to_stderr", "table", "unit_interval",
]


# ---------------------------------------------------------------------------- parser and errors


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes are a :class:`UsageError` (one line, exit 2), not a usage dump."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        cmd = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        hint = f"edgeship {cmd} --help" if cmd else "edgeship --help"
        raise UsageError(f"{message} (see {hint})")


def require_path(path: str | None, what: str) -> None:
    """The one missing-path check of every command: ``<what> '<path>' does not exist``.

    Raises:
        InputError: ``path`` does not exist.
    """
    if path is not None and not os.path.exists(path):
        raise InputError(f"{what} {path!r} does not exist")


# Python parameter names whose CLI flag is not ``--`` + the name with dashes.
RENAMED = {"eval_data": "--eval", "source_model": "--source", "calib_data": "--calib", "delegates": "--delegate"}
_VALUE = r"(\[[^\]]*\]|\([^)]*\)|'[^']*'|\"[^\"]*\"|[^\s,;)]+)"


def _plain(value: str) -> str:
    value = value.strip()
    if value == "True":  # a switch: the flag alone says it
        return ""
    if value[:1] in "[(" and value[-1:] in "])":
        return ",".join(_plain(v) for v in value[1:-1].split(",") if v.strip())
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def cli_message(message: str, flags: dict) -> str:
    """``message`` with Python parameter names turned into the CLI's flags.

    ``precision='int16x8'`` -> ``--precision int16x8``; ``input_shape (1, 8)`` ->
    ``--input-shape 1,8``; ```target``` -> ``--target``. ``flags`` maps parameter
    names to flags (``{"precision": "--precision", ...}``).
    """
    table = {**flags, **{k: v for k, v in RENAMED.items() if v in flags.values()}}
    for param in sorted(table, key=len, reverse=True):
        flag = table[param]
        p = re.escape(param)
        message = re.sub(rf"(?<![\w\-.]){p}={_VALUE}", lambda m, f=flag: f"{f} {_plain(m.group(1))}".rstrip(), message)
        message = re.sub(rf"(?<![\w\-.]){p} (\([^)]*\)|\[[^\]]*\]|'[^']*'|True\b)",
                         lambda m, f=flag: f"{f} {_plain(m.group(1))}".rstrip(), message)
        message = re.sub(rf"`{p}`|(?<![\w\-.]){p}=(?=\s)", flag, message)
        message = re.sub(rf"^{p} ", f"{flag} ", message)
    return message


def flags_of(parser: argparse.ArgumentParser) -> dict:
    """``{dest: '--long-flag'}`` for every option of ``parser``."""
    out = {}
    for a in parser._actions:  # noqa: SLF001 - argparse has no public list of actions
        longs = [s for s in a.option_strings if s.startswith("--")]
        if longs and a.dest not in ("help", "version"):
            out[a.dest] = longs[0]
    return out


def emit_error(exc: EdgeshipError, *, flags: dict | None = None, as_json: bool = False) -> int:
    """Print ``exc`` the CLI's way (one line on stderr; with ``as_json`` also one object on stdout); its exit code."""
    text = str(exc).strip()
    msg = text.splitlines()[0] if text else type(exc).__name__
    msg = cli_message(msg, flags or {})
    code = int(getattr(exc, "exit_code", 2))
    print(f"edgeship: error: {msg}", file=sys.stderr)
    if as_json:
        emit_json(sys.stdout, {"error": msg, "type": type(exc).__name__, "exit_code": code})
    return code


class WarningHandler(logging.Handler):
    """edgeship's logged warnings (a fallback, a skipped delegate) as ``edgeship: warning: ...``, in CLI words."""

    def __init__(self, flags: dict | None = None) -> None:
        super().__init__(logging.WARNING)
        self.flags = flags or {}

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"edgeship: warning: {cli_message(record.getMessage(), self.flags)}", file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


@contextlib.contextmanager
def cli_warnings(flags: dict):
    """Route the ``edgeship`` logger's warnings through :class:`WarningHandler` for the block."""
    log = logging.getLogger("edgeship")
    handler = WarningHandler(flags)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


# ---------------------------------------------------------------------------- argument types


def int_at_least(low: int):
    """An argparse ``type=``: an integer ``>= low``."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {v}")
        return v

    parse.__name__ = "integer"
    return parse


def unit_interval(text: str) -> float:
    """An argparse ``type=``: a number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def device_arg(text: str) -> str:
    """An argparse ``type=`` for ``--device``, through the one parser :meth:`edgeship.vocab.Device.parse`."""
    try:
        return str(Device.parse(text, "--device"))
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("--device ", "", 1)) from None


# ---------------------------------------------------------------------------- accelerator options


def add_accel_arguments(parser) -> None:
    """``--delegate`` (repeatable), ``--device`` and ``--strict`` on a ``run``/``bench``/``stream`` parser."""
    parser.add_argument("--delegate", action="append", default=None, metavar="PATH[:k=v,...]",
                        help="TFLite external delegate library with options, e.g. libedgetpu.so.1:device=usb:0 "
                             "(repeatable; default: none)")
    parser.add_argument("--device", type=device_arg, default=None, metavar="cpu|gpu|npu|tensorrt|edgetpu[:usb:0]",
                        help="where to run (TFLite delegate or ONNX Runtime provider); default: cpu")
    parser.add_argument("--strict", action="store_true",
                        help="fail (exit 2) instead of falling back when the delegate/device cannot be used "
                             "(default: fall back with a warning)")


def load_kwargs(args) -> dict:
    """The ``runtime.load`` keywords for the accelerator options in ``args`` (only those given).

    Raises:
        InputError: a malformed ``--delegate`` spec.
    """
    kw: dict = {}
    specs = getattr(args, "delegate", None)
    if specs:
        from edgeship.runtime.backends.delegates import parse_delegate_spec  # noqa: PLC0415

        kw["delegate"] = [parse_delegate_spec(s) for s in specs]
    if getattr(args, "device", None):
        kw["device"] = args.device
    if getattr(args, "strict", False):
        kw["strict"] = True
    return kw


def describe_info(info) -> str:
    """One line on what runs the model: backend, delegate, share of ops taken, fallbacks."""
    parts = [f"backend {info.backend}" + (f" {info.engine_version}" if info.engine_version else "")]
    if info.delegate:
        share = ""
        if info.ops_delegated is not None and info.ops_total:
            share = f" ({info.ops_delegated}/{info.ops_total} ops, {100.0 * info.ops_delegated / info.ops_total:.0f}%)"
        parts.append(f"delegate {info.delegate}{share}")
    if info.providers:
        parts.append("providers " + ", ".join(info.providers))
    parts.append(f"device {info.device}")
    line = "; ".join(parts)
    if info.fallback:
        line += " [FALLBACK: " + "; ".join(info.skipped) + "]"
    return line


# ---------------------------------------------------------------------------- output


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool):
    """Send everything written to stdout (Python and native code) to stderr; yield the real stdout.

    Used with ``--json`` so that stdout carries exactly one JSON object.
    """
    if not enabled:
        yield sys.stdout
        return
    sys.stdout.flush()
    real = os.dup(1)
    try:
        os.dup2(2, 1)
        out = os.fdopen(os.dup(real), "w")
        with contextlib.redirect_stdout(sys.stderr):
            yield out
        out.flush()
        out.close()
    finally:
        sys.stdout.flush()
        os.dup2(real, 1)
        os.close(real)


def emit_json(out, obj) -> None:
    """``obj`` as one JSON object on ``out`` (numpy values, namedtuples and enums made plain)."""
    out.write(json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n")
    out.flush()


def _json_default(o):
    import numpy as np  # noqa: PLC0415

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "_asdict"):
        return o._asdict()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "value"):
        return o.value
    return str(o)


def table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def num(v, spec=".4f") -> str:
    return "-" if v is None else format(v, spec)


def quiet_tf_env() -> None:
    """TensorFlow's C++ start-up logging off unless the user set it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
