"""``edgeship inspect``: a bundle's manifest and integrity, or a bare model file's tensors."""

from __future__ import annotations

import argparse
import os

from ..errors import EdgeshipError
from .common import emit_json, fmt_bytes, num, pct, require_path, stdout_to_stderr, table


def describe_bare(path: str) -> dict:
    """Backend, inputs and outputs of a bare ``.tflite``/``.onnx`` file (probed in a child first)."""
    from edgeship import runtime  # noqa: PLC0415

    from ..isolate import probe_if_bare  # noqa: PLC0415

    probe_if_bare(path)  # an untrusted bare model file is opened in a child first
    with runtime.load(path) as m:
        return {
            "path": os.path.abspath(path),
            "kind": "file",
            "backend": m.info.to_dict(),
            "inputs": [tensor_dict(s) for s in m.inputs],
            "outputs": [tensor_dict(s) for s in m.outputs],
        }


def tensor_dict(s) -> dict:
    d = s._asdict() if hasattr(s, "_asdict") else dict(s.__dict__)
    d["shape"] = list(d.get("shape") or [])
    d["dtype"] = str(d.get("dtype"))
    return d


def cmd_inspect(args) -> int:
    from .. import bundle as _bundle  # noqa: PLC0415
    from .. import manifest as _manifest  # noqa: PLC0415

    path = args.path
    require_path(path, "model")
    with stdout_to_stderr(args.json) as out:
        if os.path.isdir(path):
            man = _manifest.read(path)
            problems = []
            for art in man["artifacts"]:
                try:
                    _bundle.verify_file(path, art)
                except EdgeshipError as exc:
                    problems.append(str(exc))
            try:
                _bundle.verify_calibration(path, man)
            except EdgeshipError as exc:
                problems.append(str(exc))
            if args.json:
                emit_json(out, {"path": os.path.abspath(path), "kind": "bundle", "manifest": man,
                                "integrity_errors": problems})
                return 0 if not problems else 2
            print_manifest(path, man, problems)
            if problems:
                raise EdgeshipError(problems[0])
        else:
            info = describe_bare(path)
            if args.json:
                emit_json(out, info)
                return 0
            print(f"{info['path']}  (bare model file, run by {info['backend']['backend']})")
            print_tensors("inputs", info["inputs"])
            print_tensors("outputs", info["outputs"])
    return 0


def print_tensors(title, tensors):
    rows = []
    for t in tensors:
        q = t.get("quantization")
        qs = "-"
        if q and q.get("scale"):
            qs = f"scale={q['scale'][0]:.6g} zp={q['zero_point'][0]}" + (" (per-channel)" if len(q["scale"]) > 1 else "")
        rows.append([t["name"], "x".join("?" if d in (None, -1) else str(d) for d in t["shape"]), t["dtype"], qs])
    print(f"{title}:")
    print("  " + table(rows, ["name", "shape", "dtype", "quantization"]).replace("\n", "\n  "))


def print_manifest(path, man, problems):
    src = man["source"]
    print(f"bundle   {os.path.abspath(path)}")
    print(f"name     {man['name']}  (schema v{man['schema_version']}, created {man['created']})")
    print(f"source   {src.get('path') or '<in memory>'}  [{src['format']}, {src.get('layout', '?')}]")
    pre = man.get("preprocessing")
    if pre:
        print(
            f"preproc  size={pre['size'][0]}x{pre['size'][1]} resize={pre.get('resize')} color={pre.get('color')} "
            f"scale={pre.get('scale'):.6g} mean={pre.get('mean')} std={pre.get('std')} layout={pre.get('layout')}"
        )
    labels = man.get("labels")
    if labels:
        shown = ", ".join(labels[:8]) + (f", ... ({len(labels)} in all)" if len(labels) > 8 else "")
        print(f"labels   {shown}")
    cal = man.get("calibration") or {}
    if cal:
        print(f"calib    {cal.get('kind')} {cal.get('source', '')} count={cal.get('count')} method={cal.get('method')}")
    rows = []
    val = (man.get("validation") or {}).get("artifacts", {})
    for art in man["artifacts"]:
        v = val.get(art["file"], {})
        rows.append([
            art["file"], art["format"], art["precision"], art.get("io", "-"), fmt_bytes(art["bytes"]),
            fmt_bytes(art["gzip_bytes"]), pct(v.get("top1_agreement")), pct(v.get("accuracy")), num(v.get("cosine")),
        ])
    print()
    print(table(rows, ["artifact", "format", "precision", "io", "bytes", "gzip", "top-1 agree", "accuracy", "cosine"]))
    for art in man["artifacts"]:
        print()
        print(f"{art['file']}:")
        print_tensors("inputs", art["inputs"])
        print_tensors("outputs", art["outputs"])
        for note in art.get("notes", []):
            print(f"  note: {note}")
    if problems:
        print()
        for p in problems:
            print(f"INTEGRITY: {p}")


def add_parser(sub) -> argparse.ArgumentParser:
    i = sub.add_parser("inspect", help="show a bundle's manifest or a model file's tensors")
    i.add_argument("path", help="bundle folder or .tflite/.onnx file")
    i.add_argument("--json", action="store_true", help="print one JSON object on stdout (default: text)")
    i.set_defaults(func=cmd_inspect)
    return i
