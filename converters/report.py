"""``report.md``: what a conversion gained (size) and lost (accuracy), in one page."""

from __future__ import annotations

REPORT_NAME = "report.md"


def _kb(n) -> str:
    return f"{n / 1024:.1f} KiB" if n is not None else "-"


def _pct(v) -> str:
    return "-" if v is None else f"{100.0 * v:.1f}%"


def _num(v, fmt="{:.4f}") -> str:
    return "-" if v is None else fmt.format(v)


def validation_table(manifest: dict) -> str:
    """A markdown table: one row per artifact with size and validation metrics."""
    rows = [
        "| artifact | precision | io | size | gzip | top-1 agreement | accuracy (source) | cosine | SQNR dB |",
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
            f"{_pct(v.get('top1_agreement'))} | {acc} | {_num(v.get('cosine'))} | {_num(v.get('sqnr_db'), '{:.1f}')} |"
        )
    return "\n".join(rows)


def render(manifest: dict, *, source_bytes: int | None, warnings: tuple = ()) -> str:
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
        f"Validated on {val.get('count', 0)} samples: {val.get('data', '-')}.",
        "",
        "## Settings",
        "",
        f"- calibration: {cal.get('count', 0)} samples, kind `{cal.get('kind', 'none')}`, "
        f"method `{cal.get('method', '-')}`, seed {cal.get('seed', '-')}, from `{cal.get('source', '-')}`",
    ]
    if cal.get("kind") == "random":
        lines.append("- **calibration used random noise (asked for by name)**: ranges and numbers do not reflect real data")
    for key, value in (manifest.get("settings") or {}).items():
        if key in ("calib", "calib_count", "seed", "calib_method"):
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
