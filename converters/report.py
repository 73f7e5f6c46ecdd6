"""``report.md`` and ``report.html``: what a conversion gained (size, speed) and lost (accuracy).

Both are written from the manifest, ``calibration.npz`` and the artifacts in the
bundle folder, so :func:`build_report` can rebuild them later from a bundle alone
(no TensorFlow needed: latency is measured through :mod:`edgeship.runtime`).
``report.html`` is self-contained: plots are PNGs drawn with matplotlib (Agg)
and embedded as base64 ``data:`` URLs; nothing is fetched from elsewhere.

Figures in the report come from the manifest (sizes, validation, pruning,
accuracy-aware attempts, per-layer quantization error) except latency, which is
measured when the report is built, on this machine (its CPU count is printed).
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np

from .report_html import plots, render_html

REPORT_NAME = "report.md"
HTML_NAME = "report.html"
LATENCY_RUNS = 20
LATENCY_BUDGET_S = 2.0


def _kb(n) -> str:
    return f"{n / 1024:.1f} KiB" if n is not None else "-"


def _pct(v) -> str:
    return "-" if v is None else f"{100.0 * v:.1f}%"


def _num(v, fmt="{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


def validation_table(manifest: dict) -> str:
    """A markdown table: one row per artifact with size and validation metrics."""
    rows = [
        "| artifact | precision | io | size | gzip | top-1 agreement (or task metric) | accuracy (source) | cosine | SQNR dB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    vals = manifest.get("validation", {}).get("artifacts", {})
    for a in manifest["artifacts"]:
        v = vals.get(a["file"], {})
        acc = "-"
        if v.get("accuracy") is not None:
            acc = f"{_pct(v['accuracy'])} ({_pct(v.get('source_accuracy'))})"
        rows.append(
            f"| {a['file']} | {a['precision']} | {a.get('io', '-')} | {_kb(a['bytes'])} | {_kb(a['gzip_bytes'])} | "
            f"{_agreement(v)} | {acc} | {_num(v.get('cosine'))} | {_num(v.get('sqnr_db'), '{:.1f}')} |"
        )
    if manifest.get("task_reason") and manifest["task_reason"] != "given":
        rows.append(f"\nTask {manifest.get('task')}: {manifest['task_reason']}.")
    return "\n".join(rows)


def _agreement(v: dict) -> str:
    """Top-1 agreement; for a detector its mAP against labels or detections' F1 against the source's; for a
    segmentation model its mIoU against label masks or its masks' mIoU against the source's."""
    if v.get("top1_agreement") is None and v.get("map50_95") is not None:  # a detector against labels
        return (f"mAP@0.5:0.95 {v['map50_95']:.3f} (source {_num(v.get('source_map50_95'), '{:.3f}')}, "
                f"{v.get('labelled_images')} labelled images)"
                + (f"; detections F1 {v['detection_f1']:.3f}" if v.get("detection_f1") is not None else ""))
    if v.get("top1_agreement") is None and v.get("detection_f1") is not None:
        return f"detections F1 {v['detection_f1']:.3f}"
    if v.get("top1_agreement") is None and v.get("label_miou") is not None:  # segmentation against label masks
        return (f"mIoU {v['label_miou']:.3f} (source {_num(v.get('source_label_miou'), '{:.3f}')}, "
                f"{v.get('labelled_images')} labelled images)"
                + (f"; masks mIoU vs source {v['miou']:.3f}" if v.get("miou") is not None else ""))
    if v.get("top1_agreement") is None and v.get("miou") is not None:
        return f"masks mIoU vs source {v['miou']:.3f}"
    return _pct(v.get("top1_agreement"))


# -- measurements made when the report is built ----------------------------------------


def measure_latency(folder: str, manifest: dict, *, runs: int = LATENCY_RUNS, budget_s: float = LATENCY_BUDGET_S) -> dict:
    """p50/p90 of ``Model.run`` on one calibration-shaped sample per artifact, through edgeship.runtime.

    Returns ``{file: {p50_ms, p90_ms, runs, backend, threads} | {error}}`` plus ``_machine``.
    """
    out: dict = {"_machine": {"cpu_count": os.cpu_count(), "machine": platform.machine(),
                              "python": platform.python_version()}}
    try:
        from edgeship.runtime import load  # noqa: PLC0415
    except ImportError as exc:  # pragma: no cover
        out["_error"] = f"edgeship.runtime unavailable: {exc}"
        return out
    x = None
    cal = _calibration_path(folder, manifest)
    if cal is not None:
        from edgeship.errors import BundleError  # noqa: PLC0415
        from edgeship.safeio import load_npz  # noqa: PLC0415

        try:  # one row, read within the memory budget
            got = load_npz(cal, ("x",), error=BundleError, select={"x": lambda shape, dtype: [0] if shape and shape[0] else None})
            if "x" in got:
                x = np.asarray(got["x"][:1], np.float32)
        except BundleError:
            x = None
    if x is None:
        shape = [1 if d is None else int(d) for d in manifest["source"]["inputs"][0]["shape"]]
        shape[0] = 1
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
    for a in manifest.get("artifacts", []):
        path = os.path.join(folder, a["file"])
        if not os.path.isfile(path):
            continue
        try:
            from .tflite import quiet  # noqa: PLC0415
        except ImportError:  # pragma: no cover
            quiet = None
        try:
            if quiet is not None:
                with quiet():
                    model = load(path)
            else:  # pragma: no cover
                model = load(path)
            try:
                for _ in range(3):
                    model.run(x)
                times = []
                start = time.perf_counter()
                while len(times) < runs and (time.perf_counter() - start < budget_s or len(times) < 3):
                    t0 = time.perf_counter()
                    model.run(x)
                    times.append((time.perf_counter() - t0) * 1000.0)
                info = getattr(model, "info", None)
                out[a["file"]] = {
                    "p50_ms": float(np.percentile(times, 50)), "p90_ms": float(np.percentile(times, 90)),
                    "runs": len(times), "backend": getattr(info, "backend", None),
                    "threads": getattr(info, "threads", None),
                }
            finally:
                model.close()
        except Exception as exc:  # a report never fails a conversion: say what could not be measured
            out[a["file"]] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
    return out


def _calibration_path(folder: str, manifest: dict) -> str | None:
    """The bundle's calibration file (a plain name inside ``folder``), or None when there is none.

    Raises:
        BundleError: the manifest names a file outside the bundle, a link or a special file.
    """
    from edgeship.bundle import member_path, verify_calibration  # noqa: PLC0415

    name = (manifest.get("calibration") or {}).get("file") or "calibration.npz"
    if not os.path.lexists(os.path.join(folder, os.path.basename(name))) and os.path.basename(name) == name:
        return None
    if (manifest.get("calibration") or {}).get("file"):
        return verify_calibration(folder, manifest)  # its sha256 too
    return member_path(folder, name, what="calibration file")


def calibration_summary(folder: str, manifest: dict) -> dict | None:
    """Count, shape, value range, mean/std and class histogram of ``calibration.npz``."""
    from edgeship.errors import BundleError  # noqa: PLC0415
    from edgeship.safeio import load_npz  # noqa: PLC0415

    path = _calibration_path(folder, manifest)
    if path is None:
        return None
    got = load_npz(path, ("x", "y"), error=BundleError)  # bounded; never unpickles
    x, y = got.get("x"), got.get("y")
    if x is None:
        return None
    out = {"count": int(x.shape[0]), "shape": [int(d) for d in x.shape[1:]], "dtype": str(x.dtype),
           "min": float(np.min(x)), "max": float(np.max(x)), "mean": float(np.mean(x)), "std": float(np.std(x))}
    if y is not None and y.size:
        labels = y.argmax(axis=1) if y.ndim == 2 and y.shape[1] > 1 else y.reshape(-1)
        if labels.dtype.kind in "iu" or (labels.dtype.kind == "f" and np.all(np.mod(labels, 1) == 0)):
            vals, counts = np.unique(labels.astype(np.int64), return_counts=True)
            out["classes"] = {int(v): int(c) for v, c in zip(vals, counts)}
    return out


def _size_lines(manifest: dict, source_bytes) -> list:
    arts = manifest.get("artifacts", [])
    lines = ["| artifact | bytes | gzip bytes | gzip / raw |", "|---|---|---|---|"]
    if source_bytes:
        lines.append(f"| source | {source_bytes} | - | - |")
    for a in arts:
        ratio = a["gzip_bytes"] / a["bytes"] if a.get("bytes") else None
        lines.append(f"| {a['file']} | {a['bytes']} | {a['gzip_bytes']} | {_num(ratio, '{:.3f}')} |")
    return lines


def _pruning_lines(pr: dict) -> list:
    lines = [
        f"- method: {pr.get('method', '-')}; target {_num(pr.get('target'), '{:.2f}')}"
        + (f", structure {pr['structure']}" if pr.get("structure") else "")
        + f"; achieved {_pct(pr.get('achieved_total'))} of the prunable weights",
        f"- fine-tuned: {'yes, ' + str(pr.get('epochs')) + ' epochs' if pr.get('fine_tuned') else 'no'}"
        + (f" on {pr['train_count']} samples" if pr.get("train_count") else ""),
    ]
    bridge = pr.get("bridge") or {}
    if pr.get("bridged") or bridge.get("bridged"):
        lines.append(f"- Keras 3 model bridged to tf_keras; max abs output difference before pruning: "
                     f"{_num(bridge.get('max_abs_diff'), '{:.2e}')}")
    cost = pr.get("fp32_cost") or pr.get("accuracy_cost")
    if cost:
        acc = ""
        if cost.get("accuracy") is not None:
            acc = f", accuracy {_pct(cost['accuracy'])} vs {_pct(cost.get('source_accuracy'))} dense"
        lines.append(f"- pruned FP32 model vs the dense source: drop {_num(cost.get('drop_points'), '{:.1f}')} points, "
                     f"top-1 agreement {_pct(cost.get('top1_agreement'))}{acc} ({cost.get('count')} samples)")
    lines += ["", "| layer | target | achieved | params |", "|---|---|---|---|"]
    for lyr in pr.get("layers") or []:
        lines.append(f"| {lyr['name']} | {_pct(lyr.get('target'))} | {_pct(lyr.get('achieved'))} | {lyr.get('params')} |")
    for s in pr.get("skipped") or []:
        lines.append(f"| {s['name']} | skipped | {s.get('reason', '')} | |")
    return lines


def _accuracy_aware_lines(aa: dict) -> list:
    lines = []
    for fname, r in aa.items():
        lines += [
            f"**{fname}**: plain INT8 dropped {_num(r.get('baseline_drop_points'), '{:.1f}')} points "
            f"(max_drop {r.get('max_drop')}); kept in float: **{', '.join(r.get('kept_float') or []) or 'none'}**; "
            f"size cost {r.get('size_cost_bytes'):+d} bytes ({r.get('size_cost_gzip_bytes'):+d} gzip); "
            f"{r.get('seconds')} s.",
            "",
            "| attempt | kept in float | drop (points) | bytes | gzip bytes |",
            "|---|---|---|---|---|",
        ]
        for i, a in enumerate(r.get("attempts") or []):
            lines.append(f"| {i} | {', '.join(a.get('kept_float') or []) or '(plain INT8)'} | "
                         f"{_num(a.get('drop_points'), '{:.1f}')} | {a.get('bytes', '-')} | {a.get('gzip_bytes', '-')} |")
        lines.append("")
    return lines


def _layer_error_lines(errs: dict) -> list:
    lines = []
    for fname, rows in errs.items():
        lines += [f"{fname} (TFLite QuantizationDebugger on the calibration samples; per-layer SQNR = RMS of the "
                  "float activation over the RMSE of its quantized twin, lowest first):", "",
                  "| layer | op | SQNR dB | RMSE | RMSE / scale | scale |", "|---|---|---|---|---|---|"]
        for r in rows[:10]:
            lines.append(f"| {r['layer']} | {r['op']} | {_num(r.get('sqnr_db'), '{:.1f}')} | {_num(r.get('rmse'), '{:.4g}')} | "
                         f"{_num(r.get('rmse_over_scale'), '{:.3f}')} | {_num(r.get('scale'), '{:.4g}')} |")
        lines.append("")
    return lines


def _latency_lines(latency: dict) -> list:
    m = latency.get("_machine", {})
    lines = [f"Measured when this report was built, on this machine ({m.get('cpu_count')} CPUs, {m.get('machine')}), "
             "through edgeship.runtime, batch 1, after 3 warm-up runs; not a device claim.", "",
             "| artifact | p50 ms | p90 ms | runs | backend | threads |", "|---|---|---|---|---|---|"]
    for k, v in latency.items():
        if k.startswith("_"):
            continue
        if "error" in v:
            lines.append(f"| {k} | not measured: {v['error']} | | | | |")
        else:
            lines.append(f"| {k} | {v['p50_ms']:.3f} | {v['p90_ms']:.3f} | {v['runs']} | {v.get('backend') or '-'} | "
                         f"{v.get('threads') or '-'} |")
    if latency.get("_error"):
        lines.append(f"\nLatency not measured: {latency['_error']}")
    return lines


def _calib_lines(summary: dict | None) -> list:
    if not summary:
        return ["- no calibration.npz in the bundle"]
    lines = [f"- {summary['count']} samples shaped {summary['shape']} ({summary['dtype']}), values in "
             f"[{summary['min']:.4g}, {summary['max']:.4g}], mean {summary['mean']:.4g}, std {summary['std']:.4g}"]
    if summary.get("classes"):
        lines.append("- samples per class: " + ", ".join(f"{k}: {v}" for k, v in summary["classes"].items()))
    return lines


def render(manifest: dict, *, source_bytes: int | None, warnings: tuple = (), latency: dict | None = None,
           calibration: dict | None = None) -> str:
    """The report as markdown text."""
    src = manifest["source"]
    cal = manifest.get("calibration") or {}
    val = manifest.get("validation", {})
    lines = [
        f"# {manifest['name']}: conversion report",
        "",
        f"Source: `{src.get('path') or 'in-memory model'}` ({src['format']}"
        + (f", {_kb(source_bytes)}" if source_bytes else "") + ")",
        "",
        "## Artifacts and validation",
        "",
        validation_table(manifest),
        "",
        f"Validated on {val.get('count', 0)} samples: {val.get('data', '-')}."
        + (" Reference: the original dense source model (the figures include what pruning cost)."
           if manifest.get("pruning") else ""),
        "",
        "## Size",
        "",
        *_size_lines(manifest, source_bytes),
        "",
        "Sparsity saves space only after compression: compare the gzip column.",
    ]
    if manifest.get("pruning"):
        lines += ["", "## Pruning", "", *_pruning_lines(manifest["pruning"])]
    if manifest.get("compression"):
        from .compress.report import compression_lines  # noqa: PLC0415

        lines += ["", "## Compression", "", *compression_lines(manifest["compression"], latency)]
    aa = (manifest.get("settings") or {}).get("accuracy_aware")
    if aa:
        lines += ["", "## Accuracy-aware quantization", "", *_accuracy_aware_lines(aa)]
    if val.get("layer_errors"):
        lines += ["", "## Layers with the largest quantization error", "", *_layer_error_lines(val["layer_errors"])]
    if latency:
        lines += ["", "## Latency", "", *_latency_lines(latency)]
    lines += [
        "",
        "## Calibration set",
        "",
        *_calib_lines(calibration),
        "",
        "## Settings",
        "",
        f"- calibration: {cal.get('count', 0)} samples, kind `{cal.get('kind', 'none')}`, "
        f"method `{cal.get('method', '-')}`, seed {cal.get('seed', '-')}, from `{cal.get('source', '-')}`",
    ]
    if cal.get("kind") == "random":
        lines.append("- **calibration used random noise (asked for by name)**: ranges and numbers do not reflect real data")
    for key, value in (manifest.get("settings") or {}).items():
        if key in ("calib", "calib_count", "seed", "calib_method", "accuracy_aware"):
            continue
        lines.append(f"- {key}: `{value}`")
    notes = [f"{a['file']}: {n}" for a in manifest["artifacts"] for n in a.get("notes", [])]
    items = list(dict.fromkeys(list(warnings) + [n for n in notes if n not in warnings]))
    if items:
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in items]
    tools = manifest.get("tools", {})
    lines += ["", "Tools: " + ", ".join(f"{k} {v}" for k, v in tools.items()), ""]
    return "\n".join(lines)


# -- writing ----------------------------------------------------------------------------


def write_reports(folder: str, manifest: dict, *, source_bytes: int | None = None, warnings: tuple = (),
                  latency: bool = True) -> tuple[str, str]:
    """Write ``report.md`` and ``report.html`` into ``folder`` (the artifacts and
    ``calibration.npz`` must be there); returns their paths."""
    lat = measure_latency(folder, manifest) if latency else None
    calib = calibration_summary(folder, manifest)
    md = render(manifest, source_bytes=source_bytes, warnings=warnings, latency=lat, calibration=calib)
    page = render_html(md, plots(manifest, source_bytes, lat or {}), manifest)
    md_path, html_path = os.path.join(folder, REPORT_NAME), os.path.join(folder, HTML_NAME)
    with open(md_path, "w", encoding="utf-8") as fh:
        fh.write(md)
    with open(html_path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return md_path, html_path


def build_report(bundle_dir, *, source_model=None, latency: bool = True) -> tuple[str, str]:
    """Rebuild ``report.md`` and ``report.html`` of an existing bundle (``edgeship report PATH``).

    Uses the bundle's ``manifest.json``, ``calibration.npz`` and artifacts (latency is
    re-measured here through edgeship.runtime); TensorFlow is not needed.
    ``source_model`` (a path) only supplies the source size when the manifest's
    source path is gone.

    Raises:
        BundleError: ``bundle_dir`` has no readable ``manifest.json``.
    """
    from edgeship.errors import BundleError  # noqa: PLC0415

    from edgeship import manifest as _manifest  # noqa: PLC0415

    folder = os.fspath(bundle_dir)
    if not os.path.isfile(os.path.join(folder, "manifest.json")):
        raise BundleError(f"{folder} is not a bundle folder: it has no manifest.json")
    manifest = _manifest.read(folder)  # bounded, schema-checked: calibration.file stays inside the bundle
    src_bytes = None
    for cand in (source_model, (manifest.get("source") or {}).get("path")):
        if cand and os.path.isfile(os.fspath(cand)):
            src_bytes = os.path.getsize(os.fspath(cand))
            break
    return write_reports(folder, manifest, source_bytes=src_bytes, latency=latency)


__all__ = ["REPORT_NAME", "HTML_NAME", "validation_table", "render", "render_html", "write_reports", "build_report",
           "measure_latency", "calibration_summary"]
