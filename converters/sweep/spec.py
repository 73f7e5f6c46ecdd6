"""The sweep spec: a TOML file -> a frozen :class:`SweepSpec`, every key checked before any work.

Format (paths are relative to the spec file)::

    [sweep]
    name = "digits"              # default: the file's stem
    output = "digits-sweep"      # the sweep folder (default: "<stem>-sweep" beside the spec)
    cpus_per_trial = 1           # CPUs Ray reserves per conversion; TensorFlow's threads are bounded to them
    timeout_s = 900              # a conversion running longer is cancelled and recorded as failed
    seed = 0

    [[model]]                    # one or more
    name = "digits"
    path = "model.keras"         # .keras / .h5 / SavedModel folder / .onnx
    allow_unsafe = false         # models with code (Lambda layers) only when true

    [data]
    calib = "data/calib"         # image folder, .npy or .npz
    eval = "data/test.npz"       # evaluation data with labels (.npz x, y or a class-folder tree)
    train = "data/train.npz"     # optional: fine-tuning data for pruned trials (.npz x, y or class folders)
    preprocess = "size=16x16,color=gray,scale=1/255"   # optional, as --preprocess
    labels = ["0", "1"]          # optional: a list or a text file

    [axes]                       # every combination is one trial
    precision = ["fp32", "fp16", "dynamic", "int8"]
    io = ["int8"]
    calib_method = ["minmax"]
    calib_count = [50, 100, 200]
    prune = [0.0]                # target sparsity; 0 = not pruned
    prune_structure = [""]       # "" or "N:M"
    target = ["cpu"]
    format = ["tflite"]

    [timing]
    engines = ["litert"]         # default: the first engine available for each artifact's format
    runs = 100
    warmup = 10
    threads = 1
    node = ""                    # Ray node id or IP to time on (default: the node of the driver)

    [constraints]
    max_drop = 1.0               # accuracy points below the source
    max_latency_ms = 5.0
    objective = "latency"        # latency | bytes | accuracy
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from edgeship.errors import SweepSpecError
from edgeship.vocab import CalibMethod, Format, IOType, Precision, Target, values

__all__ = ["SweepSpec", "ModelSpec", "DataSpec", "Axes", "Timing", "Constraints", "OBJECTIVES", "load_spec",
           "parse_spec"]

OBJECTIVES = ("latency", "bytes", "accuracy")
_TOP = {"sweep", "model", "data", "axes", "timing", "constraints"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: str  # absolute
    allow_unsafe: bool = False


@dataclass(frozen=True)
class DataSpec:
    calib: str | None  # absolute paths
    eval: str
    preprocess: str | None = None
    labels: tuple | str | None = None
    train: str | None = None


@dataclass(frozen=True)
class Axes:
    precision: tuple = ("int8",)
    io: tuple = ("int8",)
    calib_method: tuple = ("minmax",)
    calib_count: tuple = (200,)
    prune: tuple = (0.0,)
    prune_structure: tuple = ("",)
    target: tuple = ("cpu",)
    format: tuple = ("tflite",)

    def names(self) -> tuple:
        return ("precision", "io", "calib_method", "calib_count", "prune", "prune_structure", "target", "format")


@dataclass(frozen=True)
class Timing:
    engines: tuple = ()
    runs: int = 100
    warmup: int = 10
    threads: int = 1
    node: str = ""


@dataclass(frozen=True)
class Constraints:
    max_drop: float | None = None
    max_latency_ms: float | None = None
    objective: str = "latency"


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep: models x data x axes, how to time, what to recommend. Build with :func:`load_spec`."""

    name: str
    output: str  # absolute sweep folder
    models: tuple
    data: DataSpec
    axes: Axes = field(default_factory=Axes)
    timing: Timing = field(default_factory=Timing)
    constraints: Constraints = field(default_factory=Constraints)
    cpus_per_trial: int = 1
    timeout_s: float = 900.0
    seed: int = 0
    source: str = ""  # the spec file, when read from one


def load_spec(path: str | os.PathLike) -> SweepSpec:
    """Read and check the TOML sweep spec at ``path``.

    Raises:
        SweepSpecError: the file is missing, not TOML, or a key is unknown, mistyped or out of range
            (the message and ``.key`` name it).
    """
    import tomllib  # noqa: PLC0415

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SweepSpecError(f"sweep spec {path!r} does not exist (expected a TOML file)")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SweepSpecError(f"sweep spec {path}: not valid TOML: {exc}") from None
    return parse_spec(raw, base=os.path.dirname(os.path.abspath(path)), source=os.path.abspath(path))


def _err(where: str, key: str, msg: str) -> SweepSpecError:
    return SweepSpecError(f"sweep spec {where}: {key}: {msg}", key=key)


class _Reader:
    def __init__(self, where: str, base: str):
        self.where, self.base = where, base

    def table(self, raw: dict, key: str, allowed: set, required: bool = False) -> dict:
        t = raw.get(key)
        if t is None:
            if required:
                raise _err(self.where, key, f"the [{key}] table is required")
            return {}
        if not isinstance(t, dict):
            raise _err(self.where, key, f"must be a table ([{key}]), got {type(t).__name__}")
        unknown = sorted(set(t) - allowed)
        if unknown:
            raise _err(self.where, f"{key}.{unknown[0]}", f"unknown key; expected one of {', '.join(sorted(allowed))}")
        return t

    def typed(self, t: dict, key: str, name: str, kind, default=None, *, low=None, high=None):
        if name not in t:
            return default
        v = t[name]
        ok = isinstance(v, kind) and not (kind in (int, (int, float)) and isinstance(v, bool))
        if not ok:
            want = {str: "a string", bool: "true or false", int: "an integer", (int, float): "a number"}.get(kind, kind)
            raise _err(self.where, f"{key}.{name}", f"must be {want}, got {v!r}")
        if low is not None and v < low:
            raise _err(self.where, f"{key}.{name}", f"must be >= {low}, got {v!r}")
        if high is not None and v > high:
            raise _err(self.where, f"{key}.{name}", f"must be <= {high}, got {v!r}")
        return v

    def path(self, t: dict, key: str, name: str, *, required: bool = True) -> str | None:
        v = self.typed(t, key, name, str)
        if v is None:
            if required:
                raise _err(self.where, f"{key}.{name}", "is required (a path)")
            return None
        p = os.path.normpath(os.path.join(self.base, os.path.expanduser(v)))
        if not os.path.exists(p):
            raise _err(self.where, f"{key}.{name}", f"{v!r} does not exist (resolved to {p})")
        return p


def _axis(r: _Reader, t: dict, name: str, default: tuple, check) -> tuple:
    if name not in t:
        return default
    v = t[name]
    if not isinstance(v, list) or not v:
        raise _err(r.where, f"axes.{name}", f"must be a non-empty list, got {v!r}")
    out = []
    for item in v:
        out.append(check(item))
    if len(set(out)) != len(out):
        raise _err(r.where, f"axes.{name}", f"lists a value twice: {v!r}")
    return tuple(out)


def _enum_check(r: _Reader, name: str, enum):
    def check(item):
        if not isinstance(item, str) or item not in values(enum):
            raise _err(r.where, f"axes.{name}", f"{item!r} is not supported; expected one of {', '.join(values(enum))}")
        return item
    return check


def _axes(r: _Reader, raw: dict) -> Axes:
    t = r.table(raw, "axes", set(Axes().names()))
    d = Axes()

    def count(item):
        if isinstance(item, bool) or not isinstance(item, int) or item < 1:
            raise _err(r.where, "axes.calib_count", f"{item!r} is not a positive integer")
        return item

    def sparsity(item):
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not 0.0 <= float(item) <= 0.95:
            raise _err(r.where, "axes.prune", f"{item!r} is not a sparsity in [0, 0.95] (0 = not pruned)")
        return float(item)

    def structure(item):
        if not isinstance(item, str) or (item and not re.fullmatch(r"\d+:\d+", item)):
            raise _err(r.where, "axes.prune_structure", f"{item!r} is not \"\" or \"N:M\" (e.g. \"2:4\")")
        return item

    return Axes(
        precision=_axis(r, t, "precision", d.precision, _enum_check(r, "precision", Precision)),
        io=_axis(r, t, "io", d.io, _enum_check(r, "io", IOType)),
        calib_method=_axis(r, t, "calib_method", d.calib_method, _enum_check(r, "calib_method", CalibMethod)),
        calib_count=_axis(r, t, "calib_count", d.calib_count, count),
        prune=_axis(r, t, "prune", d.prune, sparsity),
        prune_structure=_axis(r, t, "prune_structure", d.prune_structure, structure),
        target=_axis(r, t, "target", d.target, _enum_check(r, "target", Target)),
        format=_axis(r, t, "format", d.format, _enum_check(r, "format", Format)),
    )


def _models(r: _Reader, raw: dict) -> tuple:
    ms = raw.get("model")
    if ms is None:
        raise _err(r.where, "model", "at least one [[model]] table (name, path) is required")
    if isinstance(ms, dict):
        ms = [ms]
    if not isinstance(ms, list) or not ms or not all(isinstance(m, dict) for m in ms):
        raise _err(r.where, "model", "must be one or more [[model]] tables")
    out, seen = [], set()
    for i, m in enumerate(ms):
        key = f"model[{i}]"
        unknown = sorted(set(m) - {"name", "path", "allow_unsafe"})
        if unknown:
            raise _err(r.where, f"{key}.{unknown[0]}", "unknown key; expected name, path, allow_unsafe")
        path = r.path(m, key, "path")
        name = r.typed(m, key, "name", str, os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0])
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise _err(r.where, f"{key}.name", f"{name!r} may hold only letters, digits, '_', '-', '.'")
        if name in seen:
            raise _err(r.where, f"{key}.name", f"{name!r} names two models")
        seen.add(name)
        out.append(ModelSpec(name=name, path=path, allow_unsafe=bool(r.typed(m, key, "allow_unsafe", bool, False))))
    return tuple(out)


def _data(r: _Reader, raw: dict) -> DataSpec:
    t = r.table(raw, "data", {"calib", "eval", "train", "preprocess", "labels"}, required=True)
    labels = t.get("labels")
    if labels is not None:
        if isinstance(labels, list) and all(isinstance(x, str) for x in labels):
            labels = tuple(labels)
        elif isinstance(labels, str):
            labels = r.path(t, "data", "labels")
        else:
            raise _err(r.where, "data.labels", f"must be a list of strings or a text file, got {labels!r}")
    return DataSpec(calib=r.path(t, "data", "calib", required=False), eval=r.path(t, "data", "eval"),
                    preprocess=r.typed(t, "data", "preprocess", str), labels=labels,
                    train=r.path(t, "data", "train", required=False))


def parse_spec(raw: dict, *, base: str = ".", source: str = "") -> SweepSpec:
    """Check a spec already read into a dict (paths relative to ``base``).

    Raises:
        SweepSpecError: a key is unknown, mistyped or out of range.
    """
    where = source or "(dict)"
    r = _Reader(where, os.path.abspath(base))
    if not isinstance(raw, dict):
        raise _err(where, "(top)", "a sweep spec is a table of tables")
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise _err(where, unknown[0], f"unknown table; expected {', '.join(sorted(_TOP))}")
    s = r.table(raw, "sweep", {"name", "output", "cpus_per_trial", "timeout_s", "seed"})
    stem = os.path.splitext(os.path.basename(source))[0] if source else "sweep"
    name = r.typed(s, "sweep", "name", str, stem)
    output = r.typed(s, "sweep", "output", str, f"{stem}-sweep")
    models = _models(r, raw)
    data = _data(r, raw)
    axes = _axes(r, raw)
    if any(p in ("int8", "int16x8") for p in axes.precision) and data.calib is None:
        raise _err(where, "data.calib", "is required: axes.precision has int8/int16x8, which need calibration data")

    tt = r.table(raw, "timing", {"engines", "runs", "warmup", "threads", "node"})
    engines = tt.get("engines", [])
    if not isinstance(engines, list) or not all(isinstance(e, str) for e in engines):
        raise _err(where, "timing.engines", f"must be a list of engine names, got {engines!r}")
    from edgeship.runtime.backends.registry import registered  # noqa: PLC0415 - cheap, no engine import

    known = [e.name for e in registered()]
    for e in engines:
        if e not in known:
            raise _err(where, "timing.engines", f"{e!r} is not an engine; expected one of {', '.join(known)}")
    timing = Timing(engines=tuple(engines), runs=r.typed(tt, "timing", "runs", int, 100, low=1),
                    warmup=r.typed(tt, "timing", "warmup", int, 10, low=0),
                    threads=r.typed(tt, "timing", "threads", int, 1, low=1),
                    node=r.typed(tt, "timing", "node", str, ""))

    ct = r.table(raw, "constraints", {"max_drop", "max_latency_ms", "objective"})
    objective = r.typed(ct, "constraints", "objective", str, "latency")
    if objective not in OBJECTIVES:
        raise _err(where, "constraints.objective", f"{objective!r} is not one of {', '.join(OBJECTIVES)}")
    md = r.typed(ct, "constraints", "max_drop", (int, float), None, low=0)
    ml = r.typed(ct, "constraints", "max_latency_ms", (int, float), None)
    if ml is not None and ml <= 0:
        raise _err(where, "constraints.max_latency_ms", f"must be > 0, got {ml!r}")
    constraints = Constraints(max_drop=None if md is None else float(md),
                              max_latency_ms=None if ml is None else float(ml), objective=objective)
    return SweepSpec(
        name=name, output=os.path.normpath(os.path.join(r.base, os.path.expanduser(output))), models=models,
        data=data, axes=axes, timing=timing, constraints=constraints,
        cpus_per_trial=r.typed(s, "sweep", "cpus_per_trial", int, 1, low=1),
        timeout_s=float(r.typed(s, "sweep", "timeout_s", (int, float), 900.0, low=1)),
        seed=r.typed(s, "sweep", "seed", int, 0), source=source)
