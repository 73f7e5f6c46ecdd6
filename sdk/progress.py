"""Progress for long work: a bar on a terminal, one line per step for a person reading a log.

- ``progress(iterable, total=, desc=)``: a bar on stderr when stderr is a terminal
  (tqdm when installed, else a tiny built-in bar); in *line mode* also one line
  ``desc: N ...`` when the loop starts.
- ``step(desc)``: one line ``desc ...`` when a long step without a loop starts
  (training, converting), in line mode.
- ``pin_console(lines=...)``: a program that a person watches (``edgeship demo``,
  ``edgeship convert``) pins the current stderr, so progress stays visible while
  a library silences file descriptor 2 around TensorFlow, and turns line mode on.

``EDGESHIP_PROGRESS=0`` turns everything off, ``EDGESHIP_PROGRESS=1`` turns bars
and lines on even when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

__all__ = ["console", "enabled", "lines_enabled", "pin_console", "progress", "step", "unpin_console"]

_state = {"console": None, "lines": False, "depth": 0}


def enabled() -> bool:
    """Bars on: ``EDGESHIP_PROGRESS`` is 1, or it is unset and stderr is a terminal."""
    flag = os.environ.get("EDGESHIP_PROGRESS")
    if flag == "0":
        return False
    if flag == "1":
        return True
    return sys.stderr.isatty()


def lines_enabled() -> bool:
    """One line per step: a program pinned the console with ``lines=True`` (or ``EDGESHIP_PROGRESS=1``)."""
    flag = os.environ.get("EDGESHIP_PROGRESS")
    if flag == "0":
        return False
    return bool(_state["lines"]) or flag == "1"


def console():
    """Where progress goes: the pinned stderr if a program pinned one, else ``sys.stderr``."""
    return _state["console"] or sys.stderr


def pin_console(*, lines: bool = True) -> None:
    """Keep writing progress to the stderr of now, even while fd 2 is redirected later; ``lines``: line mode on."""
    unpin_console()
    try:
        sys.stderr.flush()
        _state["console"] = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8",
                                      errors="replace")
    except (OSError, ValueError, AttributeError):  # no real fd 2 (an embedded interpreter): plain stderr
        _state["console"] = None
    _state["lines"] = lines


def unpin_console() -> None:
    """Back to ``sys.stderr``, line mode off."""
    con, _state["console"], _state["lines"] = _state["console"], None, False
    if con is not None:
        with contextlib.suppress(OSError, ValueError):
            con.close()


def _line(text: str) -> None:
    out = console()
    with contextlib.suppress(OSError, ValueError):
        out.write("  " * _state["depth"] + text + "\n")
        out.flush()


@contextlib.contextmanager
def step(desc: str):
    """A long step without a loop (training, converting): one line ``desc ...`` when it starts, in line mode.

    Loops and steps inside it are indented under it.
    """
    if lines_enabled():
        _line(f"{desc} ...")
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1


def progress(it: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    """Iterate ``it`` showing a bar (on a terminal) and, in line mode, one line when the loop starts."""
    if lines_enabled() and desc:
        _line(f"{desc} ({total}) ..." if total else f"{desc} ...")
    if not enabled():
        yield from it
        return
    out = console()
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(it, total=total, desc=desc, leave=False, file=out, dynamic_ncols=True)
        return
    start = time.perf_counter()
    n = 0
    for n, item in enumerate(it, 1):
        if total:
            done = int(30 * n / total)
            out.write(f"\r{desc} [{'#' * done}{'.' * (30 - done)}] {n}/{total} {time.perf_counter() - start:.1f}s")
            out.flush()
        yield item
    out.write("\r" + " " * 70 + "\r")
