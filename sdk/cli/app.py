"""The ``edgeship`` parser (one sub-command per module) and ``main``: exit codes and errors the CLI's way."""

from __future__ import annotations

import errno
import os
import sys
from typing import Sequence

from .. import __version__
from ..errors import EdgeshipError, UsageError
from . import bench, convert, demo, devices, inspect, report, run, stream, sweep
from . import eval as eval_cmd
from .common import Parser, cli_warnings, emit_error, emit_json, flags_of

COMMANDS = (convert, inspect, run, eval_cmd, bench, report, demo, stream, devices, sweep)


def build_parser() -> Parser:
    """The full ``edgeship`` parser; each sub-parser knows its flags (``cli_flags``) for error messages."""
    p = Parser(prog="edgeship",
               description="Convert Keras/ONNX models to calibrated INT8 TFLite/ONNX bundles and run them on edge "
                           "devices.")
    p.add_argument("--version", action="version", version=f"edgeship {__version__}", help="print the version")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        sp = module.add_parser(sub)
        sp.set_defaults(cli_flags=flags_of(sp))
    return p


def _wants_json(argv: Sequence[str]) -> bool:
    head = list(argv[: list(argv).index("--")] if "--" in argv else argv)
    return "--json" in head


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``edgeship ARGV``; the exit code (0 done, 2 the user's mistake, 1 an internal error, 130 interrupted)."""
    # Engines' known start-up lines (LiteRT's "Created TensorFlow Lite XNNPACK delegate") stay off the
    # terminal while a command runs; anything else they write is shown (runtime/backends/base.py,
    # EDGESHIP_VERBOSE=1: all). Restored afterwards: a program that calls main() keeps its own setting.
    before = os.environ.get("EDGESHIP_QUIET_NATIVE")
    os.environ["EDGESHIP_QUIET_NATIVE"] = before or "1"
    try:
        return _main(argv)
    finally:
        if before is None:
            os.environ.pop("EDGESHIP_QUIET_NATIVE", None)


def _main(argv: Sequence[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(argv)
    flags: dict = {}
    try:
        args, extra = build_parser().parse_known_args(argv)
        flags = getattr(args, "cli_flags", {})
        if extra:
            where = f"edgeship {args.command} --help" if getattr(args, "command", None) else "edgeship --help"
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see {where})")
        as_json = bool(getattr(args, "json", as_json))
        if not getattr(args, "command", None):
            names = ", ".join(m.__name__.rsplit(".", 1)[1] for m in COMMANDS)
            raise UsageError(f"a command is needed: {names} (see edgeship --help)")
        with cli_warnings(flags):
            return int(args.func(args) or 0)
    except EdgeshipError as exc:
        return emit_error(exc, flags=flags, as_json=as_json)
    except KeyboardInterrupt:
        print("edgeship: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            # a full disk or a read-only/forbidden folder is not a bug of ours
            where = f" ({exc.filename})" if exc.filename else ""
            err = UsageError(f"{exc.strerror}{where}; nothing partial was left at the output: free space or choose "
                             "another folder")
            return emit_error(err, as_json=as_json)
        return _internal(exc, as_json)
    except Exception as exc:  # an internal error: show it so it can be reported
        return _internal(exc, as_json)


def _internal(exc: BaseException, as_json: bool) -> int:
    import traceback  # noqa: PLC0415

    traceback.print_exception(exc)
    print("edgeship: internal error (exit 1); please report it with the traceback above", file=sys.stderr)
    if as_json:
        emit_json(sys.stdout, {"error": f"internal error: {type(exc).__name__}: {exc}", "type": type(exc).__name__,
                               "exit_code": 1})
    return 1
