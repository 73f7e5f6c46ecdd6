"""The hardening suite's figures: every test records what it tried, and the run ends with one table.

Each test adds rows with :func:`record` (the ``harden`` fixture); at the end of
the session ``pytest_terminal_summary`` prints them (``make harden``). Counts
are what happened, not what was expected: the assertions in the tests say
which figures must be 0.
"""

from __future__ import annotations

import os
import time

import pytest

from _hutil import ORDER as _ORDER, ROWS as _ROWS, T0 as _T0, record  # noqa: E402

@pytest.fixture()
def harden():
    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _ROWS:
        return
    tr = terminalreporter
    head = ("area",) + _ORDER
    rows = []
    for area, row in _ROWS.items():
        cells = [area]
        for k in _ORDER:
            v = row.get(k, "")
            cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        rows.append(cells)
    widths = [max(len(str(r[i])) for r in rows + [list(head)]) for i in range(len(head) - 1)]
    tr.write_sep("=", "edgeship hardening figures")
    fmt = lambda cells: " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " | " + str(cells[-1])  # noqa: E731
    tr.write_line(fmt(head))
    tr.write_line("-+-".join("-" * w for w in widths) + "-+-" + "-" * 5)
    for r in rows:
        tr.write_line(fmt(r))
    tr.write_line(f"(wall time of the session: {time.perf_counter() - _T0[0]:.0f} s; "
                  f"EDGESHIP_HARDEN_N={os.environ.get('EDGESHIP_HARDEN_N', 'unset')})")
