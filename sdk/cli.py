"""The ``edgeship`` command line.

Exit codes: 0 done, 2 the user's mistake (one clear line on stderr, no
traceback), 1 an internal error. ``--json`` prints exactly one JSON object on
stdout; everything else (progress, logs) goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Sequence

from . import __version__
from .cli_accel import add_accel_arguments, add_devices_parser, load_kwargs, parse_targets
from .errors import EdgeshipError, InputError

PRECISIONS = ("fp32", "fp16", "dynamic", "int8", "int16x8")
IO_TYPES = ("int8", "uint8", "float")
TARGETS = ("cpu", "edgetpu", "gpu", "jetson")


class UsageError(EdgeshipError, ValueError):
    """A command-line argument is malformed."""


# ---------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool):
    """Send everything written to stdout (Python and native code) to stderr.

    Used with ``--json`` so that stdout carries exactly one JSON object.
    """
    if not enabled:
        yield sys.stdout
        return
    sys.stdout.flush()
    real = os.dup(1)
    try:
        os.dup2(2, 1)
        out = os.fdopen(os.dup(real), "w")
        with contextlib.redirect_stdout(sys.stderr):
            yield out
        out.flush()
        out.close()
    finally:
        sys.stdout.flush()
        os.dup2(real, 1)
        os.close(real)


def _emit_json(out, obj) -> None:
    out.write(json.dumps(obj, indent=2, default=_json_default, allow_nan=False) + "\n")
    out.flush()


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "_asdict"):
        return o._asdict()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    if hasattr(o, "value"):
        return o.value
    return str(o)


def _table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _num(v, spec=".4f") -> str:
    return "-" if v is None else format(v, spec)


def _parse_shape(text: str | None):
    if not text:
        return None
    try:
        dims = [None if d.strip() in ("?", "-1", "None", "") else int(d) for d in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise UsageError(f"--input-shape {text!r} is not a list of integers such as 1,224,224,3") from None
    if any(d is not None and d <= 0 for d in dims):
        raise UsageError(f"--input-shape {text!r} has a non-positive dimension")
    return tuple(dims)


def _parse_labels(text: str | None):
    if not text:
        return None
    if os.path.isfile(text):
        with open(text, "r", encoding="utf-8") as fh:
            return [ln.strip() for ln in fh if ln.strip()]
    if "," in text:
        return [s.strip() for s in text.split(",")]
    raise UsageError(f"--labels {text!r} is neither a file (one label per line) nor a comma-separated list")


def _set_threads_env():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ---------------------------------------------------------------------------- commands


def cmd_convert(args) -> int:
    _set_threads_env()
    from .preprocess import PreprocessSpec

    if not os.path.exists(args.model):
        raise InputError(f"model {args.model!r} does not exist")
    if args.calib is None and args.precision in ("int8", "int16x8"):
        raise UsageError(
            f"--precision {args.precision} needs calibration data: pass --calib IMAGES_DIR|FILE.npy|FILE.npz "
            "(or --calib random to use noise, which the report will flag)"
        )
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip()) if args.formats else None
    for f in formats or ():
        if f not in ("tflite", "onnx"):
            raise UsageError(f"--formats has {f!r}; expected a comma list of tflite, onnx")
    preprocess = None
    if args.preprocess:
        preprocess = args.preprocess  # parsed by convert() once the input shape is known
    from edgeship.converters import convert

    with _stdout_to_stderr(args.json) as out:
        result = convert(
            args.model,
            args.output,
            calib=args.calib,
            precision=args.precision,
            io=args.io,
            formats=formats,
            preprocess=preprocess,
            labels=_parse_labels(args.labels),
            eval_data=args.eval,
            max_drop=args.max_drop,
            calib_count=args.calib_count,
            seed=args.seed,
            input_shape=_parse_shape(args.input_shape),
            force=args.force,
            allow_legacy_h5=args.allow_legacy_h5,
            allow_unsafe=args.allow_unsafe,
            calib_method=args.calib_method,
            exclude=tuple(e for e in (args.exclude or "").split(",") if e),
            target=args.target,
            prune=args.prune,
            prune_structure=args.prune_structure,
            prune_epochs=args.prune_epochs,
            train_data=args.train_data,
            auto_fallback=args.auto_fallback,
            layer_errors=args.layer_errors,
        )
        if args.json:
            _emit_json(out, {"bundle": result.bundle, "warnings": list(result.warnings), "manifest": result.manifest})
        else:
            for w in result.warnings:
                print(f"warning: {w}", file=sys.stderr)
            print(result.table())
            print(f"\nwrote {result.bundle}")
    del PreprocessSpec
    return 0


def _describe_bare(path: str) -> dict:
    from edgeship import runtime

    from .isolate import probe_if_bare

    probe_if_bare(path)  # an untrusted bare model file is opened in a child first
    with runtime.load(path) as m:
        return {
            "path": os.path.abspath(path),
            "kind": "file",
            "backend": m.info.to_dict(),
            "inputs": [_spec(s) for s in m.inputs],
            "outputs": [_spec(s) for s in m.outputs],
        }


def _spec(s) -> dict:
    d = s._asdict() if hasattr(s, "_asdict") else dict(s.__dict__)
    d["shape"] = list(d.get("shape") or [])
    d["dtype"] = str(d.get("dtype"))
    return d


def cmd_inspect(args) -> int:
    from . import bundle as _bundle
    from . import manifest as _manifest

    path = args.path
    if not os.path.exists(path):
        raise InputError(f"{path!r} does not exist")
    with _stdout_to_stderr(args.json) as out:
        if os.path.isdir(path):
            man = _manifest.read(path)
            problems = []
            for art in man["artifacts"]:
                try:
                    _bundle.verify_file(path, art)
                except EdgeshipError as exc:
                    problems.append(str(exc))
            if args.json:
                _emit_json(out, {"path": os.path.abspath(path), "kind": "bundle", "manifest": man, "integrity_errors": problems})
                return 0 if not problems else 2
            _print_manifest(path, man, problems)
            if problems:
                raise EdgeshipError(problems[0])
        else:
            info = _describe_bare(path)
            if args.json:
                _emit_json(out, info)
                return 0
            print(f"{info['path']}  (bare model file, run by {info['backend']['backend']})")
            _print_tensors("inputs", info["inputs"])
            _print_tensors("outputs", info["outputs"])
    return 0


def _print_tensors(title, tensors):
    rows = []
    for t in tensors:
        q = t.get("quantization")
        qs = "-"
        if q and q.get("scale"):
            qs = f"scale={q['scale'][0]:.6g} zp={q['zero_point'][0]}" + (" (per-channel)" if len(q["scale"]) > 1 else "")
        rows.append([t["name"], "x".join("?" if d in (None, -1) else str(d) for d in t["shape"]), t["dtype"], qs])
    print(f"{title}:")
    print("  " + _table(rows, ["name", "shape", "dtype", "quantization"]).replace("\n", "\n  "))


def _print_manifest(path, man, problems):
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
            art["file"], art["format"], art["precision"], art.get("io", "-"), _fmt_bytes(art["bytes"]),
            _fmt_bytes(art["gzip_bytes"]), _pct(v.get("top1_agreement")), _pct(v.get("accuracy")), _num(v.get("cosine")),
        ])
    print()
    print(_table(rows, ["artifact", "format", "precision", "io", "bytes", "gzip", "top-1 agree", "accuracy", "cosine"]))
    for art in man["artifacts"]:
        print()
        print(f"{art['file']}:")
        _print_tensors("inputs", art["inputs"])
        _print_tensors("outputs", art["outputs"])
        for note in art.get("notes", []):
            print(f"  note: {note}")
    if problems:
        print()
        for p in problems:
            print(f"INTEGRITY: {p}")


def _load_inputs(paths: Sequence[str], model) -> list:
    """(name, kind, batch) for each INPUT: images go through predict, .npy through run."""
    import numpy as np

    items = []
    for p in paths:
        if not os.path.exists(p):
            raise InputError(f"input {p!r} does not exist")
        if p.lower().endswith(".npy"):
            try:
                arr = np.load(p, allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise InputError(f"cannot read {p!r} as a .npy array: {exc}") from None
            items.append((p, "array", arr))
        elif p.lower().endswith(".npz"):
            try:
                with np.load(p, allow_pickle=False) as z:
                    if "x" not in z:
                        raise InputError(f"{p!r} has no array named 'x' (found {sorted(z.files)})")
                    arr = z["x"]
            except (ValueError, OSError) as exc:
                raise InputError(f"cannot read {p!r} as a .npz file: {exc}") from None
            items.append((p, "array", arr))
        else:
            items.append((p, "image", p))
    return items


def cmd_run(args) -> int:
    import numpy as np

    from edgeship import runtime

    with _stdout_to_stderr(args.json) as out:
        from .isolate import probe_if_bare

        probe_if_bare(args.path)  # an untrusted bare model file is opened in a child first
        with runtime.load(args.path, artifact=args.artifact, threads=args.threads, **load_kwargs(args)) as model:
            items = _load_inputs(args.inputs, model)
            results = []
            labels = (model.manifest or {}).get("labels") if model.manifest else None
            for name, kind, data in items:
                if kind == "image":
                    outputs = model.predict(data)
                    batch = {k: np.asarray(v)[None] if np.asarray(v).ndim == len(model.outputs[0].shape) - 1 else np.asarray(v) for k, v in outputs.items()}
                else:
                    batch = model.run(data)
                first = next(iter(batch.values()))
                n = first.shape[0] if first.ndim > 1 else 1
                for i in range(n):
                    entry = {"input": name if n == 1 else f"{name}[{i}]"}
                    vec = np.asarray(first[i] if first.ndim > 1 else first).reshape(-1)
                    if vec.size > 1 and len(model.outputs) == 1:
                        from edgeship.runtime.adapters import get_classes

                        classes = get_classes(vec, top_k=args.top_k, labels=labels)
                        entry["classes"] = [{"id": c.id, "score": float(c.score), "label": c.label} for c in classes]
                    else:
                        entry["outputs"] = {k: np.asarray(v[i] if v.ndim > 1 else v).tolist() for k, v in batch.items()}
                    results.append(entry)
            info = model.info.to_dict()
        if args.json:
            _emit_json(out, {"model": os.path.abspath(args.path), "backend": info, "results": results})
            return 0
        for r in results:
            if "classes" in r:
                top = ", ".join(f"{c['label'] or c['id']} {c['score']:.3f}" for c in r["classes"])
                print(f"{r['input']}: {top}")
            else:
                print(f"{r['input']}: {json.dumps(r['outputs'])[:200]}")
        print(f"(ran on {info['backend']}{' + ' + info['delegate'] if info.get('delegate') else ''})", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    _set_threads_env()
    from .evaluate import evaluate_bundle

    with _stdout_to_stderr(args.json) as out:
        report = evaluate_bundle(args.path, args.data, count=args.count, against=args.against)
        if args.json:
            _emit_json(out, report)
            return 0
        print(f"evaluated {report['count']} samples from {report['data']}; reference: {report['reference']}")
        rows = []
        for name, m in report["artifacts"].items():
            rows.append([name, _pct(m.get("accuracy")), _pct(m.get("source_accuracy")), _pct(m.get("top1_agreement")),
                         _num(m.get("cosine")), _num(m.get("max_abs_error"), ".4g"), _num(m.get("sqnr_db"), ".1f")])
        print(_table(rows, ["artifact", "accuracy", "source acc.", "top-1 agree", "cosine", "max abs err", "SQNR dB"]))
        for pair, m in report.get("pairs", {}).items():
            print(f"{pair}: top-1 agreement {_pct(m.get('top1_agreement'))}, cosine {_num(m.get('cosine'))}")
    return 0


def cmd_bench(args) -> int:
    from .benchtool import bench_all, bench_model

    if args.all:
        with _stdout_to_stderr(args.json) as out:
            res = bench_all(args.path, runs=args.runs, warmup=args.warmup, threads=args.threads, batch=args.batch,
                            delegates=tuple(args.delegate or ()))
            if args.json:
                _emit_json(out, res)
                return 0
            rows = []
            for c in res["combinations"]:
                name = (c["artifact"] or os.path.basename(args.path))
                how = c["backend"] + (f" + {c['delegate']}" if c["delegate"] else "")
                if c["skipped"]:
                    rows.append([name, how, "-", "-", "-", "-", "-", "-", f"cannot run: {c['skipped']}"])
                    continue
                share = "-" if c.get("ops_accelerated") is None else f"{100 * c['ops_accelerated']:.0f}%"
                rows.append([name, how, c["runs_on"], f"{c['init_ms']:.1f}", f"{c['p50_ms']:.3f}",
                             f"{c['p90_ms']:.3f}", f"{c['p99_ms']:.3f}", _fmt_bytes(c["peak_rss_bytes"]),
                             share + (" (fell back)" if c.get("fallback") else "")])
            print(f"{res['path']}: every artifact on every engine available here, {res['runs']} runs each, "
                  "each in a fresh process")
            print(_table(rows, ["artifact", "engine", "runs on", "init ms", "p50 ms", "p90 ms", "p99 ms",
                                "peak RSS", "ops accelerated"]))
        return 0

    from .isolate import probe_if_bare

    probe_if_bare(args.path)
    with _stdout_to_stderr(args.json) as out:
        res = bench_model(args.path, artifact=args.artifact, runs=args.runs, warmup=args.warmup, threads=args.threads,
                          batch=args.batch, load_kwargs=load_kwargs(args), backend=args.backend)
        if args.json:
            _emit_json(out, res)
            return 0
        rows = [
            ["init (load)", f"{res['init_ms']:.2f} ms"],
            ["first inference", f"{res['first_ms']:.2f} ms"],
            ["mean", f"{res['mean_ms']:.3f} ms"],
            ["std", f"{res['std_ms']:.3f} ms"],
            ["p50 / p90 / p99", f"{res['p50_ms']:.3f} / {res['p90_ms']:.3f} / {res['p99_ms']:.3f} ms"],
            ["throughput", f"{res['throughput_per_s']:.1f} inferences/s (batch {res['batch']})"],
            ["peak RSS", _fmt_bytes(res["peak_rss_bytes"])],
        ]
        b = res["backend"]
        if b.get("ops_total") and b.get("delegate"):
            rows.append(["ops delegated", f"{b.get('ops_delegated') or 0} of {b['ops_total']} ({b.get('delegate')})"])
        print(f"{res['artifact']} on {b['backend']} ({res['threads'] or 'default'} threads), "
              f"{res['runs']} runs after {res['warmup']} warm-up")
        print(_table(rows, ["metric", "value"]))
    return 0


def cmd_report(args) -> int:
    from edgeship.converters.report import build_report

    md, html = build_report(args.path, source_model=args.source, latency=not args.no_latency)
    print(f"wrote {md}\nwrote {html}")
    return 0


def cmd_demo(args) -> int:
    _set_threads_env()
    from edgeship.converters import demo

    argv = []
    if args.workdir:
        argv += ["--workdir", args.workdir]
    if args.force:
        argv += ["--force"]
    return int(demo.main(argv) or 0)


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgeship",
        description="Convert Keras/ONNX models to calibrated INT8 TFLite/ONNX bundles and run them on edge devices.",
    )
    p.add_argument("--version", action="version", version=f"edgeship {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    c = sub.add_parser("convert", help="convert a Keras or ONNX model into a bundle")
    c.add_argument("model", help=".keras, SavedModel folder, .h5 (with --allow-legacy-h5) or .onnx")
    c.add_argument("-o", "--output", required=True, help="bundle folder to write")
    c.add_argument("--calib", help="calibration data: image folder, .npy, .npz (x[, y]) or the word 'random'")
    c.add_argument("--calib-count", type=int, default=200, help="maximum calibration samples (default 200)")
    c.add_argument("--calib-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    c.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: int8, or what the --target prefers (gpu: fp16)")
    c.add_argument("--io", choices=IO_TYPES + ("int16",), default=None,
                   help="input/output type of integer models (default int8; int16 for int16x8)")
    c.add_argument("--formats", default=None,
                   help="comma list of tflite,onnx (default tflite, or what the --target prefers: jetson -> onnx)")
    c.add_argument("--target", type=parse_targets, default=None, metavar="cpu|edgetpu|gpu|jetson[,...]",
                   help="devices the bundle is for (several allowed); shapes precision, I/O and formats")
    c.add_argument("--preprocess", help="e.g. size=224x224,resize=letterbox,color=rgb,scale=1/255,mean=0.5,std=0.5")
    c.add_argument("--labels", help="labels file (one per line) or a comma list")
    c.add_argument("--eval", help="held-out data for validation: .npy, or .npz with x and optional y, or image folder")
    c.add_argument("--max-drop", type=float, help="fail (writing nothing) if accuracy drops more than this many points")
    c.add_argument("--input-shape", help="fix the input shape, e.g. 1,224,224,3 (default: batch fixed to 1)")
    c.add_argument("--exclude", help="comma list of node names or op types to keep in float (ONNX)")
    c.add_argument("--prune", type=float, metavar="SPARSITY", help="prune weights to this sparsity (0-0.95) first")
    c.add_argument("--prune-structure", help="sparsity pattern: 2:4 (N:M), 1xK (blocks of K input weights) or elementwise; "
                        "default: 1x4 blocks in Dense kernels, elementwise in convolutions")
    c.add_argument("--prune-epochs", type=int, default=2, help="fine-tuning epochs while pruning (default 2)")
    c.add_argument("--train-data", help="fine-tuning data for pruning: image folder with class subfolders, or .npz x/y")
    c.add_argument("--auto-fallback", action="store_true",
                   help="with --max-drop: keep the most quantization-sensitive layers in float until the drop fits")
    c.add_argument("--layer-errors", action="store_true", help="measure the ten layers with the largest INT8 error")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--force", action="store_true", help="replace an existing bundle")
    c.add_argument("--allow-legacy-h5", action="store_true", help="accept legacy .h5 files (HDF5 loading ignores safe mode)")
    c.add_argument("--allow-unsafe", action="store_true",
                   help="load models whose files carry code (Lambda layers, custom modules); only for files you trust")
    c.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    c.set_defaults(func=cmd_convert)

    i = sub.add_parser("inspect", help="show a bundle's manifest or a model file's tensors")
    i.add_argument("path")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    r = sub.add_parser("run", help="run a bundle or model file on images or .npy batches")
    r.add_argument("path")
    r.add_argument("inputs", nargs="+", metavar="INPUT")
    r.add_argument("--top-k", type=int, default=5)
    r.add_argument("--artifact", help="artifact file name or format (tflite, onnx)")
    r.add_argument("--threads", type=int)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="measure each artifact of a bundle against its source or labels")
    e.add_argument("path")
    e.add_argument("--data", required=True, help=".npy, .npz with x and optional y, or an image folder with class subfolders")
    e.add_argument("--count", type=int, default=None, help="use at most this many samples")
    e.add_argument("--against", choices=("auto", "source", "labels"), default="auto")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="measure load time, latency percentiles, throughput and peak memory")
    b.add_argument("path")
    b.add_argument("--runs", type=int, default=100)
    b.add_argument("--warmup", type=int, default=10)
    b.add_argument("--threads", type=int)
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--artifact")
    b.add_argument("--backend", help="force an engine: litert, tflite_runtime, tensorflow.lite, onnxruntime")
    b.add_argument("--all", action="store_true",
                   help="run every artifact on every engine (and --delegate) available here; one table")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    rp = sub.add_parser("report", help="rebuild a bundle's report.md and report.html")
    rp.add_argument("path")
    rp.add_argument("--source", help="the source model, to measure per-layer errors against it")
    rp.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    rp.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", help="train a small digits CNN, convert it to INT8 and measure it")
    d.add_argument("--workdir", default=None)
    d.add_argument("--force", action="store_true")
    d.set_defaults(func=cmd_demo)

    from .cli_stream import add_stream_parser

    add_stream_parser(sub)
    add_devices_parser(sub)
    add_accel_arguments(r)
    add_accel_arguments(b)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return 2
    for name in ("runs", "warmup", "calib_count", "top_k", "batch"):
        v = getattr(args, name, None)
        if v is not None and v < (0 if name == "warmup" else 1):
            print(f"edgeship: error: --{name.replace('_', '-')} must be {'>= 0' if name == 'warmup' else '>= 1'}, got {v}",
                  file=sys.stderr)
            return 2
    try:
        return int(args.func(args) or 0)
    except EdgeshipError as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"edgeship: error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edgeship: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an internal error: show it so it can be reported
        import errno
        import traceback

        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            # a full disk or a read-only/forbidden folder is not a bug of ours
            where = f" ({exc.filename})" if exc.filename else ""
            print(f"edgeship: error: {exc.strerror}{where}; nothing partial was left at the output: free space "
                  "or choose another folder", file=sys.stderr)
            return 2

        traceback.print_exc()
        print("edgeship: internal error (exit 1); please report it with the traceback above", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
