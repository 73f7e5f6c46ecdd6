"""The report's "Compression" section: one row per stage (params, MACs, bytes, gzip bytes, latency,
accuracy) and the Pareto plot of the stages (accuracy vs latency, bubble area = bytes).

Stage rows (source, distill, low_rank, qat) carry the bytes, gzip bytes and latency of a temporary
FP32 TFLite file of that stage's model (measured during the conversion, :func:`..stage.stage_tflite`);
export rows are the artifacts themselves, their latency measured with the report's (``latency``,
from :func:`edgeship.converters.report.measure_latency`). Both through :mod:`edgeship.runtime`,
batch 1, on the machine that converted.
"""

from __future__ import annotations

__all__ = ["compression_lines", "stage_plot", "stage_points", "pareto"]


def _n(v) -> str:
    return "-" if v is None else f"{int(v):,}"


def _pct(v) -> str:
    return "-" if v is None else f"{100.0 * float(v):.2f}%"


def _latency(row: dict, latency: dict | None):
    """The row's p50 ms: measured in the conversion (stages) or by the report (artifacts)."""
    if row.get("latency_ms") is not None:
        return float(row["latency_ms"])
    v = (latency or {}).get(row.get("file") or "") or {}
    return float(v["p50_ms"]) if v.get("p50_ms") is not None else None


def _size(row: dict):
    return row.get("bytes") if row.get("bytes") is not None else row.get("fp32_bytes")


def compression_lines(block: dict, latency: dict | None = None) -> list:
    """Markdown lines for the manifest's ``compression`` block; ``latency`` = the report's artifact timings."""
    lines = [f"Stages in order: {' -> '.join(block.get('order') or [])} (only those applied are listed).", "",
             "| stage | params | MACs | bytes | gzip bytes | latency p50 ms | accuracy |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    notes = []
    for r in block.get("stages") or []:
        size = _size(r)
        acc = r.get("accuracy")
        if acc is None and r.get("top1_agreement") is not None:
            acc_s = f"agreement {_pct(r['top1_agreement'])}"
        else:
            acc_s = _pct(acc)
        lat = _latency(r, latency)
        if r.get("latency_note"):
            notes.append(f"{r['stage']}: latency {r['latency_note']}")
        lines.append(f"| {r['stage']} | {_n(r.get('params'))} | {_n(r.get('macs'))} | {_n(size)}"
                     f"{' (fp32 weights)' if r.get('bytes') is None and size is not None else ''} | "
                     f"{_n(r.get('gzip_bytes'))} | {'-' if lat is None else f'{lat:.3f}'} | {acc_s} |")
    lines += ["", "Stage rows: bytes, gzip bytes and latency of the stage's model as an FP32 TFLite (ONNX: the "
                  "FP32 file); export rows: the artifacts. Latency through edgeship.runtime, batch 1, short runs on "
                  "this machine (not a device claim; compare rows, not absolute figures)."]
    lines += [f"- {n}" for n in notes]
    d = block.get("distill")
    if d:
        gain = (None if d.get("student_accuracy") is None or d.get("labels_only_accuracy") is None
                else 100.0 * (d["student_accuracy"] - d["labels_only_accuracy"]))
        lines += ["", f"- Distillation: student {d.get('student')}, T={d.get('temperature')}, alpha={d.get('alpha')}, "
                      f"{d.get('epochs')} epochs on {d.get('train_count')} samples"
                      + ("" if d.get("labelled_count") in (None, d.get("train_count"))
                         else f" ({d['labelled_count']} labelled; labels alone: {d.get('labels_only_epochs')} epochs "
                              "over those, the same optimizer steps)")
                      + "; student accuracy "
                      f"{_pct(d.get('student_accuracy'))} vs the same student on labels alone "
                      f"{_pct(d.get('labels_only_accuracy'))}"
                      + ("" if gain is None else f" ({gain:+.2f} points from distillation)")
                      + f" (teacher {_pct(d.get('teacher_accuracy'))}); "
                      f"MACs {_n(d.get('teacher_macs'))} -> {_n(d.get('student_macs'))}."]
    lr = block.get("low_rank")
    if lr:
        ranks = ", ".join(f"{r['name']} {r['rank']}/{r['full_rank']}" for r in lr.get("layers") or [])
        lines += ["", f"- Low-rank ({lr.get('rank')}"
                      + (f", energy {lr['energy']}" if lr.get("energy") else "") + f"): ranks {ranks}"
                      + ("; fine-tuned " + str(lr.get("epochs")) + " epochs" if lr.get("fine_tuned") else
                         "; not fine-tuned") + "."]
        cost = lr.get("accuracy_cost")
        if cost:
            lines.append(f"- Low-rank cost on the FP32 ONNX model: top-1 agreement {_pct(cost.get('top1_agreement'))}"
                         + (f", accuracy drop {cost['drop_points']:.2f} points" if cost.get("drop_points") is not None
                            else "") + f" on {cost.get('count')} samples.")
    q = block.get("qat")
    if q:
        lines += ["", f"- Quantization-aware training: {q.get('method')}, {q.get('epochs')} epochs at lr "
                      f"{q.get('learning_rate')}; why: {q.get('reason')}."]
    return lines


def stage_points(block: dict | None, latency: dict | None = None) -> list:
    """``[(stage, latency ms, accuracy %, bytes)]`` of the rows with all three figures."""
    pts = []
    for r in (block or {}).get("stages") or []:
        lat, size = _latency(r, latency), _size(r)
        if lat is not None and r.get("accuracy") is not None and size:
            pts.append((r["stage"], lat, 100.0 * float(r["accuracy"]), int(size)))
    return pts


def pareto(points: list) -> list:
    """The points no other point beats on both latency (lower) and accuracy (higher), by latency."""
    front = [p for p in points
             if not any(q[1] <= p[1] and q[2] >= p[2] and (q[1] < p[1] or q[2] > p[2]) for q in points)]
    return sorted(front, key=lambda p: p[1])


def stage_plot(plt, block: dict | None, latency: dict | None = None):
    """Accuracy vs latency over the stages applied, bubble area = bytes, the Pareto front drawn;
    None when fewer than two stages have latency and accuracy (no data to compare)."""
    pts = stage_points(block, latency)
    if len(pts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    biggest = max(p[3] for p in pts)
    for name, ms, acc, size in pts:
        ax.scatter([ms], [acc], s=40 + 900 * size / biggest, alpha=0.5)
        ax.annotate(f"{name} ({size / 1024:.0f} KiB)", (ms, acc), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    front = pareto(pts)
    if len(front) > 1:
        ax.plot([p[1] for p in front], [p[2] for p in front], "k--", lw=0.8, label="Pareto front")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("latency p50, ms per batch-1 run (edgeship.runtime, this machine)")
    ax.set_ylabel("accuracy, %")
    ax.set_title("Compression stages: accuracy vs latency (bubble area = bytes)")
    return fig
