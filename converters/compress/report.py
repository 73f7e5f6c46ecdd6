"""The report's "Compression" section: one row per stage (params, MACs, bytes, accuracy)."""

from __future__ import annotations

__all__ = ["compression_lines", "stage_plot"]


def _n(v) -> str:
    return "-" if v is None else f"{int(v):,}"


def _pct(v) -> str:
    return "-" if v is None else f"{100.0 * float(v):.2f}%"


def compression_lines(block: dict) -> list:
    """Markdown lines for the manifest's ``compression`` block."""
    lines = [f"Stages in order: {' -> '.join(block.get('order') or [])} (only those applied are listed).", "",
             "| stage | params | MACs | bytes | gzip bytes | accuracy |", "|---|---:|---:|---:|---:|---:|"]
    for r in block.get("stages") or []:
        size = r.get("bytes") if r.get("bytes") is not None else r.get("fp32_bytes")
        acc = r.get("accuracy")
        if acc is None and r.get("top1_agreement") is not None:
            acc_s = f"agreement {_pct(r['top1_agreement'])}"
        else:
            acc_s = _pct(acc)
        lines.append(f"| {r['stage']} | {_n(r.get('params'))} | {_n(r.get('macs'))} | {_n(size)}"
                     f"{' (fp32 weights)' if r.get('bytes') is None and size is not None else ''} | "
                     f"{_n(r.get('gzip_bytes'))} | {acc_s} |")
    d = block.get("distill")
    if d:
        lines += ["", f"- Distillation: student {d.get('student')}, T={d.get('temperature')}, alpha={d.get('alpha')}, "
                      f"{d.get('epochs')} epochs on {d.get('train_count')} samples; student accuracy "
                      f"{_pct(d.get('student_accuracy'))} vs the same student on labels alone "
                      f"{_pct(d.get('labels_only_accuracy'))} (teacher {_pct(d.get('teacher_accuracy'))}); "
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


def stage_plot(plt, block: dict | None):
    """Accuracy vs MACs over the stages applied, bubble area = bytes (FP32 weights; the artifacts' file
    bytes at the last stage's MACs); None when there is nothing to plot."""
    if not block:
        return None
    pts, last_macs = [], None
    for r in block.get("stages") or []:
        macs = r.get("macs") if r.get("macs") else last_macs
        size = r.get("bytes") if r.get("bytes") is not None else r.get("fp32_bytes")
        if r.get("macs"):
            last_macs = r["macs"]
        if macs and r.get("accuracy") is not None and size:
            pts.append((r["stage"], macs, 100.0 * r["accuracy"], size))
    if len(pts) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    biggest = max(p[3] for p in pts)
    for name, macs, acc, size in pts:
        ax.scatter([macs], [acc], s=40 + 900 * size / biggest, alpha=0.5)
        ax.annotate(name, (macs, acc), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("MACs per inference")
    ax.set_ylabel("accuracy, %")
    ax.set_title("Compression stages: accuracy vs MACs (bubble area = bytes)")
    return fig
