"""The ``edgeship`` command line: one module per command, sharing :mod:`edgeship.cli.common`.

``edgeship.cli:main`` is the console entry point (also ``python -m edgeship`` and
``python -m edgeship.cli``). Exit codes: 0 done, 2 the user's mistake (one line
``edgeship: error: ...`` on stderr, no traceback; with ``--json`` also one JSON
object ``{"error": ..., "exit_code": 2}`` on stdout), 1 an internal error.
``--json`` prints exactly one JSON object on stdout; progress and logs go to stderr.
"""

from __future__ import annotations

from .app import build_parser, main

__all__ = ["build_parser", "main"]
