"""The measured engine choice: which artifact x engine runs a bundle fastest on this machine.

``edgeship bench BUNDLE --all --save`` measures every artifact on every engine
usable here, checks each one's outputs against a reference on the bundle's
calibration samples, and records the fastest that passes
(:func:`edgeship.benchchoice.measure_and_save`) in a small per-machine cache:
``$EDGESHIP_CACHE/choices/<key>.json`` (default ``~/.cache/edgeship``), keyed by
the bundle's content hash. ``load(path, backend="auto")`` reads it here
(:func:`lookup`); with no record, or one that no longer fits (another bundle
content, another machine, another engine version), the static order applies.

Nothing here imports an engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform

__all__ = ["Choice", "bundle_key", "choice_path", "choices_dir", "installed_versions", "lookup", "machine",
           "resolve_auto", "save"]

_SCHEMA = 1


class Choice(dict):
    """One record: ``artifact``, ``sha256``, ``backend``, ``p50_ms``, ``reason`` ... (a dict)."""


def choices_dir() -> str:
    root = os.environ.get("EDGESHIP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "edgeship")
    return os.path.join(root, "choices")


def bundle_key(manifest: dict) -> str:
    """The bundle's content hash (``manifest["content_hash"]``), else a hash of its artifacts' sha256."""
    h = manifest.get("content_hash")
    if isinstance(h, str) and h:
        return h.replace("sha256:", "")[:40]
    pairs = sorted((str(a.get("file")), str(a.get("sha256"))) for a in manifest.get("artifacts") or ())
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:40]


def choice_path(manifest: dict) -> str:
    return os.path.join(choices_dir(), bundle_key(manifest) + ".json")


def machine() -> dict:
    """What a measurement is valid for: CPU model and count, OS and machine type."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware")):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return {"cpu": model or platform.processor(), "cpus": cpus, "system": platform.system(),
            "arch": platform.machine()}


def save(manifest: dict, record: dict) -> str:
    """Write ``record`` for this bundle and machine (atomically); returns its path."""
    path = choice_path(manifest)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    data = dict(record, schema=_SCHEMA, bundle=bundle_key(manifest), machine=machine())
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def lookup(manifest: dict) -> tuple[Choice | None, str]:
    """(the measured choice for this bundle here, "") or (None, why there is none that applies)."""
    path = choice_path(manifest)
    try:
        with open(path, encoding="utf-8") as fh:
            rec = json.load(fh)
    except FileNotFoundError:
        return None, "no measured choice for this bundle on this machine (edgeship bench BUNDLE --all --save)"
    except (OSError, ValueError) as exc:
        return None, f"the measured choice {path} cannot be read ({type(exc).__name__})"
    if not isinstance(rec, dict) or rec.get("schema") != _SCHEMA or not isinstance(rec.get("choice"), dict):
        return None, f"the measured choice {path} is not one this edgeship writes"
    if rec.get("machine") != machine():
        return None, "the measured choice was made on another machine (CPU or core count differ)"
    ch = Choice(rec["choice"])
    arts = {a.get("file"): a for a in manifest.get("artifacts") or ()}
    art = arts.get(ch.get("artifact"))
    if art is None or art.get("sha256") != ch.get("sha256"):
        return None, "the measured choice names an artifact this bundle no longer has"
    versions = rec.get("engine_versions") or {}
    want = versions.get(ch.get("backend"))
    if want and want != _installed_version(ch.get("backend")):
        return None, f"the measured choice used {ch.get('backend')} {want}, another version is installed now"
    return ch, ""


_DISTS = {"litert": "ai-edge-litert", "litert_compiled": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
          "tensorflow.lite": "tensorflow", "onnxruntime": "onnxruntime", "openvino": "openvino"}


def _installed_version(backend: str | None) -> str | None:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version(_DISTS.get(backend or "", backend or ""))
    except (PackageNotFoundError, ValueError):
        return None


def installed_versions(backends) -> dict:
    """{backend: installed package version} (what a record is valid for)."""
    return {b: _installed_version(b) for b in backends}


def resolve_auto(path: str, artifact: str | None) -> tuple[str | None, str | None, str]:
    """``load(backend="auto")``: (backend, artifact, why) from the measured choice, or (None, artifact, why)."""
    if not os.path.isdir(path):
        return None, artifact, "static order (a bare model file has no measured choice)"
    from .. import manifest as _manifest  # noqa: PLC0415

    man = _manifest.read(path)
    ch, why = lookup(man)
    if ch is None:
        return None, artifact, f"static order: {why}"
    if artifact is not None and artifact not in (ch.get("artifact"), ch.get("format"), ch.get("precision")):
        return None, artifact, f"static order: artifact={artifact!r} differs from the measured choice {ch['artifact']}"
    return ch["backend"], ch["artifact"], f"measured: {ch.get('reason') or ch['artifact'] + ' on ' + ch['backend']}"
