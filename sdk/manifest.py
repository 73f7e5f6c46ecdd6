"""The bundle manifest: schema, validation, reading and writing.

``manifest.json`` is the one source of truth for the runtime. It is checked
against ``manifest.schema.json`` (kept beside this module) when a bundle is
written and when it is loaded. The check uses a small built-in validator for
the subset of JSON Schema the schema uses, so that devices need no
``jsonschema`` package; the test suite cross-checks it against ``jsonschema``.
A few rules JSON Schema cannot say (``mean``/``std`` of length 1 or the colour's
channels, non-zero ``std``) are checked beside it.

Reading is bounded: at most :data:`MAX_MANIFEST_BYTES`, nesting at most
:data:`~edgeship.safeio.MAX_JSON_DEPTH` deep (counted before ``json.loads``
recurses), no ``NaN``/``Infinity``; every failure is a :class:`BundleError`
naming the file.

:class:`Manifest`, :class:`Artifact` and :class:`TensorInfo` are frozen, typed
views of a validated manifest (``Manifest.from_dict(d)``; ``.raw`` keeps the dict).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Mapping

from . import safeio
from .errors import BundleError
from .vocab import Format, IOType, Layout, Precision

SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 16 << 20
MANIFEST_NAME = "manifest.json"
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "manifest.schema.json")


@lru_cache(maxsize=1)
def schema() -> dict:
    """The manifest JSON Schema as a dict."""
    with open(SCHEMA_PATH, "r", encoding="utf-8") as fh:
        return json.load(fh)


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _resolve(ref: str, root: dict) -> dict:
    if not ref.startswith("#/"):
        raise BundleError(f"unsupported $ref {ref!r} in manifest schema")
    node: Any = root
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _errors(value: Any, sch: dict, root: dict, path: str):
    if "$ref" in sch:
        yield from _errors(value, _resolve(sch["$ref"], root), root, path)
        return
    typ = sch.get("type")
    if typ is not None:
        types = typ if isinstance(typ, list) else [typ]
        if not any(_TYPES[t](value) for t in types):
            yield f"{path or '<root>'}: expected {' or '.join(types)}, got {type(value).__name__}"
            return
    if "enum" in sch and value not in sch["enum"]:
        yield f"{path or '<root>'}: {value!r} is not one of {sch['enum']}"
    if isinstance(value, str):
        if "minLength" in sch and len(value) < sch["minLength"]:
            yield f"{path}: string shorter than {sch['minLength']}"
        if "maxLength" in sch and len(value) > sch["maxLength"]:
            yield f"{path}: string longer than {sch['maxLength']}"
        if "pattern" in sch and not re.search(sch["pattern"], value):
            yield f"{path}: {value!r} does not match {sch['pattern']}"
    if _TYPES["number"](value):
        if "minimum" in sch and value < sch["minimum"]:
            yield f"{path}: {value} is below the minimum {sch['minimum']}"
        if "maximum" in sch and value > sch["maximum"]:
            yield f"{path}: {value} is above the maximum {sch['maximum']}"
    if isinstance(value, list):
        if "minItems" in sch and len(value) < sch["minItems"]:
            yield f"{path}: needs at least {sch['minItems']} items"
        if "maxItems" in sch and len(value) > sch["maxItems"]:
            yield f"{path}: allows at most {sch['maxItems']} items"
        if "items" in sch:
            for i, item in enumerate(value):
                yield from _errors(item, sch["items"], root, f"{path}[{i}]")
    if isinstance(value, dict):
        for key in sch.get("required", []):
            if key not in value:
                yield f"{path or '<root>'}: missing required key {key!r}"
        props = sch.get("properties", {})
        for key, item in value.items():
            if key in props:
                yield from _errors(item, props[key], root, f"{path}.{key}" if path else key)
            elif isinstance(sch.get("additionalProperties"), dict):
                yield from _errors(item, sch["additionalProperties"], root, f"{path}.{key}" if path else key)
            elif sch.get("additionalProperties") is False:
                yield f"{path or '<root>'}: unexpected key {key!r}"


def _rule_errors(manifest: Any):
    """The rules the schema cannot express."""
    if not isinstance(manifest, dict):
        return
    pre = manifest.get("preprocessing")
    if isinstance(pre, dict):
        channels = 1 if pre.get("color") == "gray" else 3
        for key in ("mean", "std"):
            v = pre.get(key)
            if isinstance(v, list) and len(v) not in (1, channels):
                yield (f"preprocessing.{key}: has {len(v)} values; expected 1 or {channels} "
                       f"(one per channel of color {pre.get('color', 'rgb')!r})")
        std = pre.get("std")
        if isinstance(std, list) and any(isinstance(x, (int, float)) and x == 0 for x in std):
            yield "preprocessing.std: a value is 0 (division by zero)"


def validation_errors(manifest: Any) -> list[str]:
    """All schema violations in ``manifest`` (empty when it is valid)."""
    root = schema()
    errs = list(_errors(manifest, root, root, ""))
    return errs + list(_rule_errors(manifest))


def validate(manifest: Any, *, where: str = "manifest") -> dict:
    """Raise :class:`BundleError` if ``manifest`` does not follow the schema."""
    errs = validation_errors(manifest)
    if errs:
        more = f" (and {len(errs) - 3} more)" if len(errs) > 3 else ""
        raise BundleError(f"{where} does not follow the manifest schema: " + "; ".join(errs[:3]) + more)
    return manifest


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def loads(text: str, *, where: str = "manifest") -> Any:
    """``json.loads`` with the nesting bounded first and ``NaN``/``Infinity`` refused.

    Raises:
        BundleError: too deep, malformed, or not finite (``where`` names the file).
    """
    depth = safeio.json_depth(text)
    if depth > safeio.MAX_JSON_DEPTH:
        raise BundleError(f"{where} nests more than {safeio.MAX_JSON_DEPTH} levels deep; not an edgeship manifest")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError, MemoryError) as exc:
        raise BundleError(f"cannot read {where}: {str(exc)[:200] or type(exc).__name__}") from None


def read(bundle_dir: str) -> dict:
    """Read and validate ``bundle_dir/manifest.json`` (a regular file, not a link, at most 16 MiB).

    Raises:
        BundleError: missing, not a regular file, too large, too deep, malformed, or
            not following the schema.
    """
    path = os.path.join(bundle_dir, MANIFEST_NAME)
    if not os.path.lexists(path):
        raise BundleError(f"{bundle_dir!r} is not an edgeship bundle: it has no {MANIFEST_NAME}")
    try:
        with safeio.open_regular(path, error=BundleError, what="manifest", follow_links=False) as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; not an edgeship manifest")
        data = loads(raw.decode("utf-8"), where=path)
    except (OSError, UnicodeDecodeError, MemoryError) as exc:
        raise BundleError(f"cannot read {path}: {exc}") from None
    if isinstance(data, dict) and data.get("schema_version") not in (None, SCHEMA_VERSION):
        raise BundleError(
            f"{path} has schema_version {data.get('schema_version')!r}; this edgeship reads "
            f"version {SCHEMA_VERSION}: upgrade edgeship or re-convert the model"
        )
    return validate(data, where=path)


def dumps(manifest: dict) -> str:
    """Serialise a manifest the way bundles store it (stable key order)."""
    return json.dumps(manifest, indent=2, sort_keys=False, allow_nan=False) + "\n"


# -- frozen views -----------------------------------------------------------------------


def _freeze(value):
    if isinstance(value, dict):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor of an artifact (or of the source model)."""

    name: str
    shape: tuple  # ints, ``None`` for a dynamic dimension
    dtype: str
    scale: tuple = ()
    zero_point: tuple = ()
    axis: int | None = None

    @property
    def quantized(self) -> bool:
        return bool(self.scale)

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorInfo":
        q = d.get("quantization") or {}
        return cls(name=str(d["name"]), shape=tuple(None if v is None else int(v) for v in d["shape"]),
                   dtype=str(d["dtype"]), scale=tuple(float(v) for v in q.get("scale") or ()),
                   zero_point=tuple(int(v) for v in q.get("zero_point") or ()),
                   axis=None if q.get("axis") is None else int(q["axis"]))


@dataclass(frozen=True)
class Artifact:
    """One model file of a bundle, as its manifest entry describes it."""

    file: str
    format: Format
    precision: Precision
    sha256: str
    bytes: int
    gzip_bytes: int
    inputs: tuple
    outputs: tuple
    io: IOType | None = None
    layout: Layout | None = None
    targets: tuple = ()
    notes: tuple = ()
    raw: Mapping = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Artifact":
        return cls(file=str(d["file"]), format=Format(d["format"]), precision=Precision(d["precision"]),
                   sha256=str(d["sha256"]), bytes=int(d["bytes"]), gzip_bytes=int(d["gzip_bytes"]),
                   inputs=tuple(TensorInfo.from_dict(t) for t in d["inputs"]),
                   outputs=tuple(TensorInfo.from_dict(t) for t in d["outputs"]),
                   io=IOType(d["io"]) if d.get("io") else None,
                   layout=Layout(d["layout"]) if d.get("layout") else None,
                   targets=tuple(d.get("targets") or ()), notes=tuple(d.get("notes") or ()), raw=_freeze(dict(d)))


@dataclass(frozen=True)
class Manifest:
    """A validated manifest as typed, immutable fields; ``raw`` is the (read-only) dict."""

    name: str
    created: str
    task: str | None
    source_format: str
    source_layout: str | None
    artifacts: tuple
    preprocessing: Mapping | None
    labels: tuple | None
    calibration_file: str | None
    schema_version: int = SCHEMA_VERSION
    raw: Mapping = field(default_factory=lambda: MappingProxyType({}), compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "manifest") -> "Manifest":
        """Validate ``d`` against the schema and wrap it.

        Raises:
            BundleError: ``d`` does not follow the schema.
        """
        validate(d, where=where)
        src = d["source"]
        cal = d.get("calibration") or {}
        return cls(name=d["name"], created=d["created"], task=d.get("task"), source_format=src["format"],
                   source_layout=src.get("layout"), artifacts=tuple(Artifact.from_dict(a) for a in d["artifacts"]),
                   preprocessing=_freeze(d["preprocessing"]) if d.get("preprocessing") else None,
                   labels=tuple(d["labels"]) if d.get("labels") is not None else None,
                   calibration_file=cal.get("file"), schema_version=int(d["schema_version"]), raw=_freeze(d))

    @classmethod
    def read(cls, bundle_dir: str) -> "Manifest":
        """:func:`read` ``bundle_dir/manifest.json`` into a view."""
        return cls.from_dict(read(bundle_dir), where=os.path.join(bundle_dir, MANIFEST_NAME))

    def artifact(self, file: str) -> Artifact:
        """The artifact named ``file``.

        Raises:
            BundleError: the bundle has no such artifact.
        """
        for a in self.artifacts:
            if a.file == file:
                return a
        raise BundleError(f"bundle {self.name!r} has no artifact {file!r} (it has {[a.file for a in self.artifacts]})")
