"""The sweep's outputs: the table, ``sweep.json``, ``sweep.md``, ``sweep.html`` (Pareto plots) and ``ship``.

The plot per target: accuracy (y) against p50 latency (x), one bubble per candidate
whose area is its file size, the Pareto front as a line, the constraint lines
(``max_latency_ms`` vertical; source accuracy minus ``max_drop`` horizontal) and the
recommended candidate starred.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shutil
import tempfile

from edgeship.errors import InputError

from ..report_html import md_to_html

__all__ = ["table", "markdown", "write", "ship", "plot_group"]


def _fmt_pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _rows(summary: dict) -> list:
    by_key = {c["key"]: c for c in summary["candidates"]}
    rows = []
    for g in summary["groups"]:
        on_front = set(g["front"])
        members = [c for c in summary["candidates"] if c["target"] == g["target"] and c["node"] == g["node"]]
        for c in sorted(members, key=lambda c: c["p50_ms"]):
            mark = "<- recommended" if c["key"] == g["recommended"] else ""
            rows.append([c["trial"][:10], c["label"], g["name"], c["engine"], _fmt_pct(c["accuracy"]),
                         "-" if c["drop_points"] is None else f"{c['drop_points']:.2f}", f"{c['p50_ms']:.3f}",
                         f"{c['bytes']:,}" if c["bytes"] is not None else "-", "*" if c["key"] in on_front else "",
                         mark])
    assert all(g["recommended"] is None or g["recommended"] in by_key for g in summary["groups"])
    return rows


HEADERS = ["trial", "settings", "target", "engine", "accuracy", "drop pts", "p50 ms", "bytes", "front", ""]


def table(summary: dict) -> str:
    """Every candidate (fastest first per target), the front (*) and the recommendation, as plain text."""
    rows = _rows(summary)
    cells = [HEADERS] + rows
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(HEADERS))]

    def line(r):
        return "  ".join(str(c).ljust(w) if i < 4 or i >= 8 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(HEADERS), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    out += [""] + [_verdict(g) for g in summary["groups"]]
    if summary["failed"]:
        out.append(f"failed trials: {len(summary['failed'])}")
        out += [f"  {f['trial'][:10]} {f['label']} ({f.get('stage')}, {f.get('kind')}): {f.get('reason')}"
                for f in summary["failed"]]
    return "\n".join(out)


def _verdict(g: dict) -> str:
    if g["recommended"]:
        c = g["candidate"]
        return (f"{g['name']}: recommended {c['trial'][:10]} ({c['label']}, {c['artifact']} on {c['engine']}): "
                f"accuracy {_fmt_pct(c['accuracy'])}, p50 {c['p50_ms']:.3f} ms, {c['bytes']:,} bytes; {g['reason']}")
    return f"{g['name']}: no recommendation: {g['reason']}"


def markdown(summary: dict) -> str:
    cs = summary["constraints"]
    lim = ", ".join(f"`{k} = {v:g}`" for k, v in cs.items() if k != "objective" and v is not None) or "none"
    md = [f"# Sweep {summary['sweep']}", "",
          f"{summary['trials']} trials; constraints: {lim}; objective: `{cs['objective']}`. "
          "Latency is p50 of batch-1 runs, each engine in a fresh process, all on one node per target.", ""]
    md += [f"- {_verdict(g)}" for g in summary["groups"]]
    md += ["", "## Candidates", "", "| " + " | ".join(h or "note" for h in HEADERS) + " |",
           "|" + "---|" * len(HEADERS)]
    md += ["| " + " | ".join(str(c).replace("|", "/") or " " for c in r) + " |" for r in _rows(summary)]
    if summary["failed"]:
        md += ["", "## Failed trials", "", "| trial | settings | stage | kind | reason |", "|---|---|---|---|---|"]
        md += [f"| {f['trial'][:10]} | {f['label']} | {f.get('stage')} | {f.get('kind')} | "
               f"{str(f.get('reason')).replace('|', '/')} |" for f in summary["failed"]]
    return "\n".join(md) + "\n"


def plot_group(summary: dict, g: dict) -> str | None:
    """The Pareto plot of one target as base64 PNG; None without matplotlib or candidates."""
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    members = [c for c in summary["candidates"] if c["target"] == g["target"] and c["node"] == g["node"]
               and c["accuracy"] is not None]
    if not members:
        return None
    cs = summary["constraints"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    biggest = max(c["bytes"] or 1 for c in members)
    precisions = sorted({c["precision"] or "?" for c in members})
    cmap = plt.get_cmap("tab10")
    for i, p in enumerate(precisions):
        pts = [c for c in members if (c["precision"] or "?") == p]
        ax.scatter([c["p50_ms"] for c in pts], [100 * c["accuracy"] for c in pts],
                   s=[40 + 900 * (c["bytes"] or 1) / biggest for c in pts], alpha=0.55, color=cmap(i % 10),
                   edgecolors="k", linewidths=0.5, label=p)
    by_key = {c["key"]: c for c in members}
    fr = [by_key[k] for k in g["front"] if k in by_key]
    if fr:
        ax.step([c["p50_ms"] for c in fr], [100 * c["accuracy"] for c in fr], where="post", color="k", lw=1.2,
                label="Pareto front")
    lat = [c["p50_ms"] for c in members]
    span = max(lat) - min(lat) or max(lat) * 0.2 or 1.0
    lo, hi = max(0.0, min(lat) - 0.25 * span), max(lat) + 0.25 * span
    ml = cs.get("max_latency_ms")
    if ml is not None and ml <= hi + 2 * span:
        hi = max(hi, ml + 0.1 * span)
        ax.axvline(ml, color="tab:red", ls="--", lw=1, label=f"max_latency_ms {ml:g}")
    elif ml is not None:  # far to the right of every candidate: say so instead of squashing the points
        ax.annotate(f"max_latency_ms {ml:g} ->", xy=(0.99, 0.02), xycoords="axes fraction", ha="right",
                    color="tab:red", fontsize=8)
    ax.set_xlim(lo, hi)
    src = next((c["source_accuracy"] for c in members if c["source_accuracy"] is not None), None)
    if cs.get("max_drop") is not None and src is not None:
        ax.axhline(100 * src - cs["max_drop"], color="tab:orange", ls="--", lw=1,
                   label=f"source - max_drop {cs['max_drop']:g}")
    if src is not None:
        ax.axhline(100 * src, color="grey", ls=":", lw=1, label="source accuracy")
    if g["recommended"] in by_key:
        c = by_key[g["recommended"]]
        ax.scatter([c["p50_ms"]], [100 * c["accuracy"]], marker="*", s=350, color="gold", edgecolors="k",
                   zorder=5, label="recommended")
    ax.set_xlabel("p50 latency, ms (batch 1)")
    ax.set_ylabel("accuracy, %")
    ax.set_title(f"{summary['sweep']}: {g['name']} (bubble area = file bytes)")
    leg = ax.legend(fontsize=7, loc="best")
    for h in getattr(leg, "legend_handles", getattr(leg, "legendHandles", [])):
        if hasattr(h, "set_sizes"):
            h.set_sizes([40])  # the legend shows colours, not sizes
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_CSS = """body{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem}td,th{border:1px solid #ccc;padding:.2rem .45rem}
th{background:#f3f3f3}code{background:#f6f6f6;padding:0 .2rem}figure{margin:1rem 0}img{max-width:100%}
figcaption{font-size:.85rem;color:#555}"""


def render_html(summary: dict) -> str:
    figs = []
    for g in summary["groups"]:
        b64 = plot_group(summary, g)
        if b64:
            title = f"Pareto front: {g['name']}"
            figs.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'
                        f"<figcaption>{html.escape(title)}</figcaption></figure>")
    body = md_to_html(markdown(summary))
    head, _, rest = body.partition("\n")
    plots = "\n".join(figs) or "<p>(no plot: matplotlib is missing or nothing was timed)</p>"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(summary['sweep'])}: sweep</title><style>{_CSS}</style></head><body>\n"
            f"{head}\n<h2>Pareto fronts</h2>\n{plots}\n{rest}\n</body></html>\n")


def write(store, summary: dict, spec) -> str:
    """``sweep.json``, ``sweep.md`` and ``sweep.html`` in the sweep folder; the html path."""
    store.write_json(os.path.join(store.root, "sweep.json"), summary)
    store.write_text("sweep.md", markdown(summary))
    return store.write_text("sweep.html", render_html(summary))


def ship(store, summary: dict, dest: str) -> dict:
    """Copy each target's recommended bundle to ``dest/<target>``; ``{target: path}``.

    Raises:
        InputError: ``dest/<target>`` exists and is not a bundle (a bundle there is replaced).
    """
    dest = os.path.abspath(dest)
    os.makedirs(dest, exist_ok=True)
    out = {}
    for g in summary["groups"]:
        c = g["candidate"]
        if not c:
            continue
        final = os.path.join(dest, g["name"])
        if os.path.exists(final) and not os.path.isfile(os.path.join(final, "manifest.json")):
            raise InputError(f"--ship: {final!r} exists and is not a bundle; choose another folder")
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=dest)
        try:
            shutil.copytree(store.bundle_path(c["trial"]), os.path.join(tmp, "b"))
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(os.path.join(tmp, "b"), final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out[g["name"]] = final
    return out
