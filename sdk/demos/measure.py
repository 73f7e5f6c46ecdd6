"""The measuring half of ``edgeship demo``: accuracy, interleaved latency, the printed tables and the report files."""

from __future__ import annotations

import json
import os
import time

import numpy as np

# Targets from issue 2 ("Done when").
MAX_SIZE_RATIO = 0.30  # INT8 .tflite bytes / FP32 .tflite bytes
MAX_ACCURACY_DROP = 0.5  # percentage points, |FP32 - INT8| on the test split


def tflite_artifact(manifest: dict, precision: str) -> dict:
    """The bundle's TFLite artifact of ``precision``."""
    for art in manifest.get("artifacts", []):
        if art.get("format") == "tflite" and art.get("precision") == precision:
            return art
    raise RuntimeError(f"the bundle has no {precision} TFLite artifact: {[a.get('file') for a in manifest['artifacts']]}")


def first_output(outputs) -> np.ndarray:
    if isinstance(outputs, dict):
        return np.asarray(next(iter(outputs.values())))
    return np.asarray(outputs)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a loaded model on ``x`` against the labels ``y``."""
    probs = first_output(model.run(x))
    return float(np.mean(np.argmax(probs.reshape(len(y), -1), axis=1) == y))


def latencies(models: dict, sample: np.ndarray, *, runs: int, warmup: int) -> dict:
    """Single-sample latency of each model, interleaved in rounds so drift hits all alike."""
    for m in models.values():
        for _ in range(warmup):
            m.run(sample)
    times = {k: [] for k in models}
    rounds = 10
    per_round = max(1, runs // rounds)
    order = list(models)
    for r in range(rounds):
        for name in order if r % 2 == 0 else order[::-1]:
            m = models[name]
            t = times[name]
            for _ in range(per_round):
                t0 = time.perf_counter()
                m.run(sample)
                t.append(time.perf_counter() - t0)
    out = {}
    for name, t in times.items():
        a = np.asarray(t) * 1e3
        out[name] = {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
                     "mean": float(a.mean()), "runs": int(a.size)}
    return out


def show(path: str) -> str:
    """``path`` relative to the current folder when it is below it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def fmt_bytes(n: int) -> str:
    return f"{n:,} B" if n < 10_000 else f"{n / 1024:,.1f} KiB"


def table(rows: list, header: list) -> str:
    cols = [header] + rows
    widths = [max(len(str(r[i])) for r in cols) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cols):
        cells = [str(c).ljust(widths[i]) if i == 0 else str(c).rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def targets(size_ratio: float, drop: float) -> dict:
    return {
        "size_ratio": {"value": size_ratio, "target": MAX_SIZE_RATIO, "pass": size_ratio <= MAX_SIZE_RATIO},
        "accuracy_drop_points": {"value": drop, "target": MAX_ACCURACY_DROP, "pass": abs(drop) <= MAX_ACCURACY_DROP},
    }


def tables(f: dict) -> tuple[str, str]:
    """(the FP32/INT8 comparison table, the targets table) of the demo's figures ``f``."""
    b, gz, acc, lat = f["bytes"], f["gzip_bytes"], f["accuracy"], f["latency_ms"]
    main = table(
        [
            ["file bytes", "-", fmt_bytes(b["fp32"]), f"{fmt_bytes(b['int8'])} ({f['size_ratio']:.2f}x)"],
            ["gzip bytes", "-", fmt_bytes(gz["fp32"]), f"{fmt_bytes(gz['int8'])} ({f['gzip_ratio']:.2f}x)"],
            ["test accuracy", f"{100 * acc['keras_fp32']:.2f}%", f"{100 * acc['tflite_fp32']:.2f}%",
             f"{100 * acc['tflite_int8']:.2f}%"],
            ["p50 latency, 1 image", "-", f"{lat['fp32']['p50']:.3f} ms", f"{lat['int8']['p50']:.3f} ms"],
            ["p90 latency, 1 image", "-", f"{lat['fp32']['p90']:.3f} ms", f"{lat['int8']['p90']:.3f} ms"],
        ],
        ["", "Keras FP32", "TFLite FP32", "TFLite INT8"],
    )
    t = f["targets"]
    checks = table(
        [
            ["INT8 / FP32 bytes", f"{f['size_ratio']:.3f}x", f"<= {MAX_SIZE_RATIO:.2f}x",
             "PASS" if t["size_ratio"]["pass"] else "FAIL"],
            ["accuracy FP32 - INT8", f"{f['accuracy_drop_points']:+.2f} points", f"within {MAX_ACCURACY_DROP} points",
             "PASS" if t["accuracy_drop_points"]["pass"] else "FAIL"],
        ],
        ["target", "measured", "wanted", ""],
    )
    return main, checks


def write_report(f: dict, header: str, main: str, checks: str) -> None:
    """``demo-report.md`` and ``demo-report.json`` in the work folder (paths in ``f['report']``)."""
    with open(f["report"]["markdown"], "w") as fh:
        fh.write(f"# {header}\n\n```\n{main}\n\n{checks}\n```\n\nProduced by `edgeship demo` in "
                 f"{f['seconds']:.1f} s.\n")
    with open(f["report"]["json"], "w") as fh:
        json.dump(f, fh, indent=2, default=str)


def print_summary(say, f: dict, header: str, main: str, checks: str) -> None:
    """The table, the targets, where everything is and the commands to try next."""
    rel_int8 = show(f["bundles"]["int8"])
    rel_img = show(f["example"]["image"])
    ex = f["example"]
    for line in ("", header, main, "", checks, "",
                 f"classify({rel_img}) -> {ex['label']} ({ex['score']:.2f}) through the INT8 bundle", "",
                 f"INT8 bundle:  {rel_int8}  (manifest.json, {f['artifacts']['int8']}, report)",
                 f"FP32 bundle:  {show(f['bundles']['fp32'])}",
                 f"Test images:  {show(f['data']['test_dir'])}  (and {show(f['data']['test_npz'])})",
                 f"Figures:      {show(f['report']['markdown'])}, {show(f['report']['json'])}",
                 f"Done in {f['seconds']:.1f} s{' (model from cache)' if f['model_cached'] else ''}. Try next:",
                 f"  edgeship inspect {rel_int8}",
                 f"  edgeship run {rel_int8} {rel_img} --top-k 3",
                 f"  edgeship eval {rel_int8} --data {show(f['data']['test_npz'])}",
                 f"  edgeship bench {rel_int8} --runs 200"):
        say(line)
