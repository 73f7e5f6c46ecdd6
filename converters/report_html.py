"""The pictures of a conversion report: matplotlib plots (PNG, base64) and the self-contained HTML page.

Used by :mod:`edgeship.converters.report`; matplotlib is imported inside the
functions and is optional (no plots without it).
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np

__all__ = ["plots", "md_to_html", "render_html"]


# -- plots ------------------------------------------------------------------------------


def _plt():
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def plots(manifest: dict, source_bytes, latency: dict) -> list:
    """``[(title, base64 png)]``; empty when matplotlib is missing."""
    plt = _plt()
    if plt is None:
        return []
    out = []
    arts = manifest.get("artifacts", [])
    try:
        names = [a["file"] for a in arts]
        raw = [a["bytes"] / 1024 for a in arts]
        gz = [a["gzip_bytes"] / 1024 for a in arts]
        if source_bytes:
            names, raw, gz = ["source"] + names, [source_bytes / 1024] + raw, [float("nan")] + gz
        fig, ax = plt.subplots(figsize=(6.5, 3.2))
        pos = np.arange(len(names))
        ax.bar(pos - 0.2, raw, 0.4, label="raw")
        ax.bar(pos + 0.2, gz, 0.4, label="gzip -9")
        ax.set_xticks(pos, names, rotation=15, fontsize=8)
        ax.set_ylabel("KiB")
        ax.legend()
        ax.set_title("Size per artifact")
        out.append(("Size per artifact (raw and gzip)", _png(fig)))
        plt.close(fig)

        vals = manifest.get("validation", {}).get("artifacts", {})
        rows = [(n, vals.get(n, {})) for n in [a["file"] for a in arts]]
        if rows:
            fig, ax = plt.subplots(figsize=(6.5, 3.2))
            pos = np.arange(len(rows))
            agree = [100 * (v.get("top1_agreement") or 0) for _, v in rows]
            acc = [100 * v["accuracy"] if v.get("accuracy") is not None else float("nan") for _, v in rows]
            ax.bar(pos - 0.2, agree, 0.4, label="top-1 agreement")
            ax.bar(pos + 0.2, acc, 0.4, label="accuracy")
            src = next((v.get("source_accuracy") for _, v in rows if v.get("source_accuracy") is not None), None)
            if src is not None:
                ax.axhline(100 * src, color="k", ls="--", lw=1, label="source accuracy")
            ax.set_xticks(pos, [n for n, _ in rows], rotation=15, fontsize=8)
            ax.set_ylim(0, 105)
            ax.set_ylabel("%")
            ax.legend(fontsize=8, loc="lower right")
            ax.set_title("Accuracy and agreement with the source")
            out.append(("Accuracy and agreement per artifact", _png(fig)))
            plt.close(fig)

        pr = manifest.get("pruning") or {}
        layers = pr.get("layers") or []
        if layers:
            fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(layers) + 1.2))
            pos = np.arange(len(layers))
            ax.barh(pos, [100 * lyr["achieved"] for lyr in layers], label="achieved")
            ax.scatter([100 * lyr["target"] for lyr in layers], pos, color="k", marker="|", s=200, label="target")
            ax.set_yticks(pos, [lyr["name"] for lyr in layers], fontsize=8)
            ax.set_xlim(0, 100)
            ax.set_xlabel("% zero weights")
            ax.invert_yaxis()
            ax.legend(fontsize=8)
            ax.set_title("Sparsity per layer")
            out.append(("Sparsity per layer", _png(fig)))
            plt.close(fig)

        from .compress.report import stage_plot  # noqa: PLC0415

        fig = stage_plot(plt, manifest.get("compression"), latency)
        if fig is not None:
            out.append(("Compression stages: accuracy vs latency, bubble = bytes (Pareto front dashed)", _png(fig)))
            plt.close(fig)

        errs = manifest.get("validation", {}).get("layer_errors") or {}
        for fname, rows_e in errs.items():
            rows_e = [r for r in rows_e if r.get("sqnr_db") is not None]
            if not rows_e:
                continue
            fig, ax = plt.subplots(figsize=(6.5, 0.4 * len(rows_e) + 1.2))
            pos = np.arange(len(rows_e))
            ax.barh(pos, [r["sqnr_db"] for r in rows_e])
            ax.set_yticks(pos, [f"{r['layer']} ({r['op']})" for r in rows_e], fontsize=8)
            ax.set_xlabel("per-layer SQNR, dB (lower = larger quantization error)")
            ax.invert_yaxis()
            ax.set_title(f"{fname}: layers with the largest quantization error")
            out.append((f"Per-layer quantization error ({fname})", _png(fig)))
            plt.close(fig)

        lat = [(k, v) for k, v in latency.items() if not k.startswith("_") and "p50_ms" in v]
        if lat:
            fig, ax = plt.subplots(figsize=(6.5, 3.0))
            pos = np.arange(len(lat))
            ax.bar(pos - 0.2, [v["p50_ms"] for _, v in lat], 0.4, label="p50")
            ax.bar(pos + 0.2, [v["p90_ms"] for _, v in lat], 0.4, label="p90")
            ax.set_xticks(pos, [k for k, _ in lat], rotation=15, fontsize=8)
            ax.set_ylabel("ms per batch-1 run")
            ax.legend()
            ax.set_title(f"Latency measured here ({latency.get('_machine', {}).get('cpu_count')} CPUs)")
            out.append(("Latency (measured when this report was built)", _png(fig)))
            plt.close(fig)
    finally:
        plt.close("all")
    return out


# -- markdown ---------------------------------------------------------------------------


# -- html -------------------------------------------------------------------------------


def md_to_html(md: str) -> str:
    """The small markdown subset this module writes (headings, tables, lists, paragraphs)."""
    out, table, lst = [], [], False

    def inline(text: str) -> str:
        t = html.escape(text)
        parts = t.split("`")
        t = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
        parts = t.split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    def flush_table():
        if not table:
            return
        rows = [r.strip().strip("|").split("|") for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
        out.append("<table>")
        for i, r in enumerate(rows):
            tag = "th" if i == 0 else "td"
            out.append("<tr>" + "".join(f"<{tag}>{inline(c.strip())}</{tag}>" for c in r) + "</tr>")
        out.append("</table>")
        table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("- "):
            if not lst:
                out.append("<ul>")
                lst = True
            out.append(f"<li>{inline(line[2:])}</li>")
            continue
        if lst:
            out.append("</ul>")
            lst = False
        if line.startswith("## "):
            out.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("# "):
            out.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush_table()
    if lst:
        out.append("</ul>")
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}td,th{border:1px solid #ccc;padding:.25rem .5rem}
th{background:#f3f3f3}code{background:#f6f6f6;padding:0 .2rem}figure{margin:1rem 0}img{max-width:100%}
figcaption{font-size:.85rem;color:#555}"""


def render_html(markdown: str, plots: list, manifest: dict) -> str:
    """A self-contained HTML page: the markdown report plus embedded PNG plots."""
    figs = "\n".join(
        f'<figure><img alt="{html.escape(t)}" src="data:image/png;base64,{b64}"><figcaption>{html.escape(t)}'
        "</figcaption></figure>" for t, b64 in plots
    ) or "<p>(matplotlib is not installed: no plots)</p>"
    body = md_to_html(markdown)
    head = body.split("\n", 1)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(str(manifest.get('name', 'model')))}: conversion report</title>"
        f"<style>{_CSS}</style></head><body>\n{head[0]}\n<h2>Plots</h2>\n{figs}\n"
        f"{head[1] if len(head) > 1 else ''}\n</body></html>\n"
    )
