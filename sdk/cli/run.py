"""``edgeship run``: a bundle or model file on images or ``.npy``/``.npz`` batches."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

from ..errors import InputError
from .common import add_accel_arguments, emit_json, int_at_least, load_kwargs, require_path, stdout_to_stderr


def read_inputs(paths: Sequence[str]) -> list:
    """``(name, kind, data)`` for each INPUT: images go through ``predict``, arrays through ``run``.

    Raises:
        InputError: a path that does not exist or an unreadable array file.
    """
    from ..calibration import default_max_bytes  # noqa: PLC0415
    from ..safeio import load_npy, load_npz  # noqa: PLC0415

    items = []
    for p in paths:
        require_path(p, "input")
        if p.lower().endswith(".npy"):  # headers checked against a memory budget first, never unpickled
            items.append((p, "array", load_npy(p, error=InputError, flag="EDGESHIP_CALIB_MAX_BYTES",
                                               max_bytes=default_max_bytes())))
        elif p.lower().endswith(".npz"):
            arr = load_npz(p, ("x",), error=InputError, required=("x",), flag="EDGESHIP_CALIB_MAX_BYTES",
                           max_bytes=default_max_bytes())["x"]
            items.append((p, "array", arr))
        else:
            items.append((p, "image", p))
    return items


def _results(model, items, top_k: int) -> list:
    import numpy as np  # noqa: PLC0415

    from edgeship.runtime import get_classes  # noqa: PLC0415

    results = []
    labels = (model.manifest or {}).get("labels") if model.manifest else None
    for name, kind, data in items:
        if kind == "image":
            outputs = model.predict(data)
            rank = len(model.outputs[0].shape)
            batch = {k: np.asarray(v)[None] if np.asarray(v).ndim == rank - 1 else np.asarray(v)
                     for k, v in outputs.items()}
        else:
            batch = model.run(data)
        first = next(iter(batch.values()))
        n = first.shape[0] if first.ndim > 1 else 1
        for i in range(n):
            entry = {"input": name if n == 1 else f"{name}[{i}]"}
            vec = np.asarray(first[i] if first.ndim > 1 else first).reshape(-1)
            if vec.size > 1 and len(model.outputs) == 1:
                classes = get_classes(vec, top_k=top_k, labels=labels)
                entry["classes"] = [{"id": c.id, "score": float(c.score), "label": c.label} for c in classes]
            else:
                entry["outputs"] = {k: np.asarray(v[i] if v.ndim > 1 else v).tolist() for k, v in batch.items()}
            results.append(entry)
    return results


def cmd_run(args) -> int:
    from edgeship import runtime  # noqa: PLC0415

    from ..isolate import probe_if_bare  # noqa: PLC0415

    require_path(args.path, "model")
    items = read_inputs(args.inputs)
    with stdout_to_stderr(args.json) as out:
        probe_if_bare(args.path)  # an untrusted bare model file is opened in a child first
        with runtime.load(args.path, artifact=args.artifact, threads=args.threads, **load_kwargs(args)) as model:
            results = _results(model, items, args.top_k)
            info = model.info.to_dict()
        if args.json:
            emit_json(out, {"model": os.path.abspath(args.path), "backend": info, "results": results})
            return 0
        for r in results:
            if "classes" in r:
                top = ", ".join(f"{c['label'] or c['id']} {c['score']:.3f}" for c in r["classes"])
                print(f"{r['input']}: {top}")
            else:
                print(f"{r['input']}: {json.dumps(r['outputs'])[:200]}")
        print(f"(ran on {info['backend']}{' + ' + info['delegate'] if info.get('delegate') else ''})", file=sys.stderr)
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    r = sub.add_parser("run", help="run a bundle or model file on images or .npy batches")
    r.add_argument("path", help="bundle folder or .tflite/.onnx file")
    r.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, .npy batches or .npz files with x")
    r.add_argument("--top-k", type=int_at_least(1), default=5, help="classes shown per input (default 5)")
    r.add_argument("--artifact", help="artifact file name or format (tflite, onnx); default: the best for this device")
    r.add_argument("--threads", type=int_at_least(1), help="inference threads (default: the runtime's, min(4, cores))")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout (default: text)")
    add_accel_arguments(r)
    r.set_defaults(func=cmd_run)
    return r
