"""Axes -> trials, each named by the sha256 of what decides its result.

A trial's id hashes the source model's bytes, the data's bytes, the conversion
settings, the timing settings and the edgeship version (canonical JSON): the same
trial has the same id on every machine and every run, so a re-run finds it done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import dataclass

from edgeship import __version__
from edgeship.bundle import sha256_file, sha256_tree
from edgeship.errors import UnsafeModelError

from .spec import SweepSpec

__all__ = ["Trial", "expand", "content_sha256", "canonical"]


@dataclass(frozen=True)
class Trial:
    """One conversion + evaluation + timing: ``settings`` are the ``convert()`` keywords that vary."""

    id: str
    model: str
    model_path: str
    source_sha256: str
    settings: tuple  # sorted (key, value) pairs
    allow_unsafe: bool = False

    @property
    def options(self) -> dict:
        return dict(self.settings)

    varying: tuple = ()  # the axes of the spec with more than one value

    def label(self) -> str:
        """A short human name: the model, the precision and the axes that vary (``digits int8 calib_count=50``)."""
        o = self.options
        parts = [self.model, o["precision"]] + [f"{k}={o[k]}" for k in self.varying if k != "precision"]
        return " ".join(str(p) for p in parts)


def canonical(obj) -> str:
    """The one JSON spelling of ``obj`` that is hashed (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def content_sha256(path: str) -> str:
    """sha256 of a file, or of a folder tree (a SavedModel, an image folder)."""
    if os.path.isdir(path):
        return sha256_tree(path, error=UnsafeModelError, what="folder")
    return sha256_file(path)


def expand(spec: SweepSpec) -> list[Trial]:
    """Every model x every combination of the axes, in spec order, as :class:`Trial`."""
    d = spec.data
    data_id = {"calib": content_sha256(d.calib) if d.calib else None, "eval": content_sha256(d.eval),
               "preprocess": d.preprocess,
               "labels": list(d.labels) if isinstance(d.labels, tuple) else
               (content_sha256(d.labels) if d.labels else None)}
    if d.train:  # only when given: the ids of sweeps without fine-tuning data stay what they were
        data_id["train"] = content_sha256(d.train)
    timing = {"engines": list(spec.timing.engines), "runs": spec.timing.runs, "warmup": spec.timing.warmup,
              "threads": spec.timing.threads}
    a = spec.axes
    names = a.names()
    varying = tuple(n for n in names if len(getattr(a, n)) > 1)
    trials = []
    for m in spec.models:
        src = content_sha256(m.path)
        for combo in itertools.product(*(getattr(a, n) for n in names)):
            settings = dict(zip(names, combo))
            settings["seed"] = spec.seed
            key = canonical({"source_sha256": src, "data": data_id, "settings": settings, "timing": timing,
                             "allow_unsafe": m.allow_unsafe, "edgeship": __version__})
            tid = hashlib.sha256(key.encode()).hexdigest()[:16]
            trials.append(Trial(id=tid, model=m.name, model_path=m.path, source_sha256=src,
                                settings=tuple(sorted(settings.items())), allow_unsafe=m.allow_unsafe,
                                varying=varying))
    return trials
