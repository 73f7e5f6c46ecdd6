"""``edgeship bench``: load time, latency percentiles, throughput and peak memory."""

from __future__ import annotations

import argparse
import os

from ..errors import InputError
from .common import (
    add_accel_arguments,
    emit_json,
    fmt_bytes,
    int_at_least,
    load_kwargs,
    require_path,
    stdout_to_stderr,
    table,
)


def _bench_all(args) -> int:
    from ..benchtool import bench_all  # noqa: PLC0415

    with stdout_to_stderr(args.json) as out:
        res = bench_all(args.path, runs=args.runs, warmup=args.warmup, threads=args.threads, batch=args.batch,
                        delegates=tuple(args.delegate or ()))
        if args.save:
            from ..benchchoice import measure_and_save  # noqa: PLC0415

            res["saved"] = measure_and_save(args.path, res)
        if args.json:
            emit_json(out, res)
            return 0
        rows = []
        for c in res["combinations"]:
            name = c["artifact"] or os.path.basename(args.path)
            how = c["backend"] + (f" + {c['delegate']}" if c["delegate"] else "")
            if c["skipped"]:
                rows.append([name, how, "-", "-", "-", "-", "-", "-", f"cannot run: {c['skipped']}"])
                continue
            share = "-" if c.get("ops_accelerated") is None else f"{100 * c['ops_accelerated']:.0f}%"
            rows.append([name, how, c["runs_on"], f"{c['init_ms']:.1f}", f"{c['p50_ms']:.3f}",
                         f"{c['p90_ms']:.3f}", f"{c['p99_ms']:.3f}", fmt_bytes(c["peak_rss_bytes"]),
                         share + (" (fell back)" if c.get("fallback") else "")])
        print(f"{res['path']}: every artifact on every engine available here, {res['runs']} runs each, "
              "each in a fresh process")
        print(table(rows, ["artifact", "engine", "runs on", "init ms", "p50 ms", "p90 ms", "p99 ms",
                           "peak RSS", "ops accelerated"]))
        if args.save:
            print(f"saved for load(backend=\"auto\") on this machine: {res['saved']['choice']['reason']}")
            print(f"  ({res['saved']['path']})")
    return 0


def cmd_bench(args) -> int:
    require_path(args.path, "model")
    if args.save and not args.all:
        raise InputError("--save records the fastest of --all: pass --all too")
    if args.save and not os.path.isdir(args.path):
        raise InputError("--save needs a bundle folder (its manifest and calibration samples), not a model file")
    if args.all:
        return _bench_all(args)
    from ..benchtool import bench_model  # noqa: PLC0415
    from ..isolate import probe_if_bare  # noqa: PLC0415

    probe_if_bare(args.path)
    with stdout_to_stderr(args.json) as out:
        res = bench_model(args.path, artifact=args.artifact, runs=args.runs, warmup=args.warmup, threads=args.threads,
                          batch=args.batch, load_kwargs=load_kwargs(args), backend=args.backend)
        if args.json:
            emit_json(out, res)
            return 0
        rows = [
            ["init (load)", f"{res['init_ms']:.2f} ms"],
            ["first inference", f"{res['first_ms']:.2f} ms"],
            ["mean", f"{res['mean_ms']:.3f} ms"],
            ["std", f"{res['std_ms']:.3f} ms"],
            ["p50 / p90 / p99", f"{res['p50_ms']:.3f} / {res['p90_ms']:.3f} / {res['p99_ms']:.3f} ms"],
            ["throughput", f"{res['throughput_per_s']:.1f} inferences/s (batch {res['batch']})"],
            ["peak RSS", fmt_bytes(res["peak_rss_bytes"])],
        ]
        b = res["backend"]
        if b.get("ops_total") and b.get("delegate"):
            rows.append(["ops delegated", f"{b.get('ops_delegated') or 0} of {b['ops_total']} ({b.get('delegate')})"])
        print(f"{res['artifact']} on {b['backend']} ({res['threads'] or 'default'} threads), "
              f"{res['runs']} runs after {res['warmup']} warm-up")
        print(table(rows, ["metric", "value"]))
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    b = sub.add_parser("bench", help="measure load time, latency percentiles, throughput and peak memory")
    b.add_argument("path", help="bundle folder or .tflite/.onnx file")
    b.add_argument("--runs", type=int_at_least(1), default=100, help="timed runs (default 100)")
    b.add_argument("--warmup", type=int_at_least(0), default=10, help="untimed runs first (default 10)")
    b.add_argument("--threads", type=int_at_least(1), help="inference threads (default: the runtime's, min(4, cores))")
    b.add_argument("--batch", type=int_at_least(1), default=1, help="samples per run (default 1)")
    b.add_argument("--artifact", help="artifact file name or format (tflite, onnx); default: the best for this device")
    b.add_argument("--backend", help="force an engine: litert, tflite_runtime, tensorflow.lite, onnxruntime, openvino "
                                     "(default: the first available)")
    b.add_argument("--all", action="store_true",
                   help="run every artifact on every engine (and --delegate) available here; one table (default: off)")
    b.add_argument("--save", action="store_true",
                   help="with --all and a bundle: check each combination's outputs on the calibration samples and "
                        "record the fastest that keeps top-1 agreement >= 0.99 for load(backend=\"auto\") on this "
                        "machine (default: off)")
    b.add_argument("--json", action="store_true", help="print one JSON object on stdout (default: a table)")
    add_accel_arguments(b)
    b.set_defaults(func=cmd_bench)
    return b
