"""``edgeship sweep``: many models x settings x targets as trials on Ray, a Pareto report, the bundle to ship.

    from edgeship.converters.sweep import load_spec, run_sweep

    result = run_sweep(load_spec("sweep.toml"))       # local Ray; address= or RAY_ADDRESS for a cluster
    print(result.table())                              # and <output>/sweep.html

Modules: :mod:`.spec` (TOML -> frozen :class:`SweepSpec`), :mod:`.trials` (content-addressed
trials), :mod:`.work` (what one trial does), :mod:`.runner` (Ray tasks, records),
:mod:`.store` (the sweep folder), :mod:`.pareto`, :mod:`.report`, :mod:`.live` (progress).
Importing this package does not import Ray or TensorFlow.
"""

from __future__ import annotations

import os

from .runner import SweepResult, run_sweep
from .spec import SweepSpec, load_spec, parse_spec
from .trials import Trial, expand

__all__ = ["sweep", "run_sweep", "SweepResult", "SweepSpec", "load_spec", "parse_spec", "Trial", "expand"]


def sweep(spec, *, address: str | None = None, ship: str | None = None, retry_failed: bool = False,
          serial: bool = False) -> SweepResult:
    """Run a sweep: ``spec`` is a TOML path, a :class:`SweepSpec` or a dict (paths relative to the cwd).

    See :func:`.runner.run_sweep` for the keywords.

    Raises:
        SweepSpecError: the spec is malformed (the message names the key).
        MissingDependencyError: Ray is not installed (``pip install "edgeship[sweep]"``).
    """
    if isinstance(spec, (str, os.PathLike)):
        spec = load_spec(spec)
    elif isinstance(spec, dict):
        spec = parse_spec(spec, base=os.getcwd())
    return run_sweep(spec, address=address, ship=ship, retry_failed=retry_failed, serial=serial)
