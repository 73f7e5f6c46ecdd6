"""A progress bar for long work, quiet when not on a terminal.

Uses tqdm when installed; otherwise a tiny built-in bar on stderr.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    if os.environ.get("EDGESHIP_PROGRESS") == "0":
        return False
    if os.environ.get("EDGESHIP_PROGRESS") == "1":
        return True
    return sys.stderr.isatty()


def progress(it: Iterable[T], *, total: int | None = None, desc: str = "") -> Iterator[T]:
    """Iterate ``it`` showing a progress bar on stderr (only when interactive)."""
    if not enabled():
        yield from it
        return
    try:
        from tqdm import tqdm  # noqa: PLC0415
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(it, total=total, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True)
        return
    start = time.perf_counter()
    n = 0
    for n, item in enumerate(it, 1):
        if total:
            done = int(30 * n / total)
            sys.stderr.write(f"\r{desc} [{'#' * done}{'.' * (30 - done)}] {n}/{total} {time.perf_counter() - start:.1f}s")
            sys.stderr.flush()
        yield item
    sys.stderr.write("\r" + " " * 70 + "\r")
