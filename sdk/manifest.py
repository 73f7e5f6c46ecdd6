"""The bundle manifest: schema, validation, reading and writing.

``manifest.json`` is the one source of truth for the runtime. It is checked
against ``manifest.schema.json`` (kept beside this module) when a bundle is
written and when it is loaded. The check uses a small built-in validator for
the subset of JSON Schema the schema uses, so that devices need no
``jsonschema`` package; the test suite cross-checks it against ``jsonschema``.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from typing import Any

from .errors import BundleError

SCHEMA_VERSION = 1
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
        if "pattern" in sch and not re.search(sch["pattern"], value):
            yield f"{path}: {value!r} does not match {sch['pattern']}"
    if _TYPES["number"](value):
        if "minimum" in sch and value < sch["minimum"]:
            yield f"{path}: {value} is below the minimum {sch['minimum']}"
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


def validation_errors(manifest: Any) -> list[str]:
    """All schema violations in ``manifest`` (empty when it is valid)."""
    root = schema()
    return list(_errors(manifest, root, root, ""))


def validate(manifest: Any, *, where: str = "manifest") -> dict:
    """Raise :class:`BundleError` if ``manifest`` does not follow the schema."""
    errs = validation_errors(manifest)
    if errs:
        more = f" (and {len(errs) - 3} more)" if len(errs) > 3 else ""
        raise BundleError(f"{where} does not follow the manifest schema: " + "; ".join(errs[:3]) + more)
    return manifest


def read(bundle_dir: str) -> dict:
    """Read and validate ``bundle_dir/manifest.json``."""
    path = os.path.join(bundle_dir, MANIFEST_NAME)
    if not os.path.isfile(path):
        raise BundleError(f"{bundle_dir!r} is not an edgeship bundle: it has no {MANIFEST_NAME}")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
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
