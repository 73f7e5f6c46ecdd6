"""Sweep progress: one bar (trials done / failed / running of the total) and one line per finished trial.

The bar shows on a terminal (or with ``EDGESHIP_PROGRESS=1``); the per-trial lines
show when a program pinned the console in line mode (the CLI does) or with
``EDGESHIP_PROGRESS=1``; ``EDGESHIP_PROGRESS=0`` turns both off.
"""

from __future__ import annotations

import contextlib
import time

from edgeship import progress

__all__ = ["Live"]


class Live:
    """Counts of the sweep and their display."""

    def __init__(self, total: int, desc: str = "sweep"):
        self.total, self.desc = total, desc
        self.done = self.failed = self.running = 0
        self.t0 = time.perf_counter()
        self._bar = None
        if progress.enabled() and total:
            try:
                from tqdm import tqdm  # noqa: PLC0415

                self._bar = tqdm(total=total, desc=desc, file=progress.console(), dynamic_ncols=True, leave=True)
            except ImportError:
                self._bar = None
        self._draw()

    def _draw(self) -> None:
        text = f"done {self.done}, failed {self.failed}, running {self.running}"
        if self._bar is not None:
            self._bar.n = self.done + self.failed
            self._bar.set_postfix_str(text, refresh=True)
        elif progress.enabled() and self.total:
            with contextlib.suppress(OSError, ValueError):
                out = progress.console()
                out.write(f"\r{self.desc}: {self.done + self.failed}/{self.total} ({text}) "
                          f"{time.perf_counter() - self.t0:.0f}s ")
                out.flush()

    def line(self, text: str) -> None:
        """One line (a trial finished, a phase started), above the bar."""
        if not progress.lines_enabled():
            return
        if self._bar is not None:
            self._bar.write(text, file=progress.console())
        else:
            with contextlib.suppress(OSError, ValueError):
                progress.console().write(("\n" if progress.enabled() else "") + text + "\n")
                progress.console().flush()

    def set_running(self, n: int) -> None:
        if n != self.running:
            self.running = n
            self._draw()

    def finished(self, ok: bool, text: str) -> None:
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.line(text)
        self._draw()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif progress.enabled() and self.total:
            with contextlib.suppress(OSError, ValueError):
                progress.console().write("\n")
