"""Candidates, Pareto fronts and the recommendation per target.

A *candidate* is one (trial, artifact, engine) that was converted, evaluated and timed.
Candidates are compared only within one target and one timing node (latency is a
property of a device: timings from different machines are never mixed). The front
is the set of candidates no other beats on both accuracy (higher) and p50 latency
(lower); the recommendation is the best candidate under the constraints for the
objective (``latency``: fastest, ``bytes``: smallest, ``accuracy``: most accurate; ties
broken by the other two), or none, with why.
"""

from __future__ import annotations

__all__ = ["candidates", "front", "recommend", "summarize"]


def candidates(records) -> list[dict]:
    """Every timed (trial, artifact, engine) of the done records, as flat dicts."""
    out = []
    for rec in records:
        if rec.get("status") != "done":
            continue
        arts = {a["file"]: a for a in rec["conversion"]["artifacts"]}
        tm = rec.get("timing") or {}
        for row in tm.get("rows", []):
            a = arts.get(row["artifact"])
            if a is None or "p50_ms" not in row:
                continue
            acc = a.get("accuracy") if a.get("accuracy") is not None else a.get("top1_agreement")
            out.append({
                "key": f"{rec['id']}:{row['artifact']}:{row['engine']}", "trial": rec["id"], "label": rec["label"],
                "model": rec["model"], "target": rec["settings"]["target"], "precision": a.get("precision"),
                "artifact": row["artifact"], "engine": row["engine"], "node": tm.get("node"),
                "hostname": tm.get("hostname"), "accuracy": acc, "source_accuracy": a.get("source_accuracy"),
                "drop_points": a.get("drop_points"), "p50_ms": row["p50_ms"], "p90_ms": row.get("p90_ms"),
                "bytes": a.get("bytes"), "gzip_bytes": a.get("gzip_bytes"),
            })
    return out


def front(cands: list[dict]) -> list[str]:
    """Keys of the candidates on the accuracy/latency Pareto front, fastest first."""
    pts = [c for c in cands if c["accuracy"] is not None]
    keep = []
    for c in pts:
        dominated = any(o["accuracy"] >= c["accuracy"] and o["p50_ms"] <= c["p50_ms"]
                        and (o["accuracy"] > c["accuracy"] or o["p50_ms"] < c["p50_ms"]) for o in pts)
        if not dominated:
            keep.append(c)
    return [c["key"] for c in sorted(keep, key=lambda c: (c["p50_ms"], -c["accuracy"]))]


def _meets(c: dict, max_drop, max_latency_ms) -> str:
    """'' when ``c`` meets the constraints, else what it misses."""
    if max_drop is not None:
        if c["drop_points"] is None:
            return "no accuracy drop measured (evaluation data without labels)"
        if c["drop_points"] > max_drop:
            return f"drops {c['drop_points']:.2f} points > max_drop {max_drop:g}"
    if max_latency_ms is not None and c["p50_ms"] > max_latency_ms:
        return f"p50 {c['p50_ms']:.3f} ms > max_latency_ms {max_latency_ms:g}"
    return ""


_ORDER = {
    "latency": lambda c: (c["p50_ms"], -(c["accuracy"] or 0), c["bytes"] or 0),
    "bytes": lambda c: (c["bytes"] or 0, c["p50_ms"], -(c["accuracy"] or 0)),
    "accuracy": lambda c: (-(c["accuracy"] or 0), c["p50_ms"], c["bytes"] or 0),
}


def recommend(cands: list[dict], *, max_drop=None, max_latency_ms=None, objective: str = "latency") -> dict:
    """``{"key": ..., "candidate": {...}, "reason": ...}``; ``key`` None when no candidate meets the constraints."""
    if not cands:
        return {"key": None, "candidate": None, "reason": "no trial was converted, evaluated and timed"}
    ok = [c for c in cands if not _meets(c, max_drop, max_latency_ms)]
    limits = ", ".join(f"{n} {v:g}" for n, v in (("max_drop", max_drop), ("max_latency_ms", max_latency_ms))
                       if v is not None) or "no constraints"
    if not ok:
        closest = min(cands, key=_ORDER[objective])
        return {"key": None, "candidate": None,
                "reason": f"none of the {len(cands)} candidates meets {limits} (e.g. {closest['label']} on "
                          f"{closest['engine']}: {_meets(closest, max_drop, max_latency_ms)})"}
    best = min(ok, key=_ORDER[objective])
    return {"key": best["key"], "candidate": best,
            "reason": f"best {objective} of the {len(ok)} of {len(cands)} candidates that meet {limits}"}


def summarize(records, spec) -> dict:
    """The whole result: candidates, a front and a recommendation per (target, node), the failed trials."""
    cs = spec.constraints
    cands = candidates(records)
    groups = {}
    for c in cands:
        groups.setdefault((c["target"], c["node"]), []).append(c)
    nodes = {n for _, n in groups}
    out_groups = []
    for (target, node), members in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        rec = recommend(members, max_drop=cs.max_drop, max_latency_ms=cs.max_latency_ms, objective=cs.objective)
        out_groups.append({"target": target, "node": node, "hostname": members[0]["hostname"],
                           "name": target if len(nodes) == 1 else f"{target}@{members[0]['hostname']}-{str(node)[:8]}",
                           "front": front(members), "recommended": rec["key"], "reason": rec["reason"],
                           "candidate": rec["candidate"]})
    for target in spec.axes.target:  # a target with nothing timed still gets its line
        if not any(g["target"] == target for g in out_groups):
            out_groups.append({"target": target, "node": None, "hostname": None, "name": target, "front": [],
                               "recommended": None, "candidate": None,
                               "reason": "no trial of this target was converted, evaluated and timed"})
    failed = [{"trial": r["id"], "label": r["label"], "stage": r.get("failed_stage"), **r.get("error", {})}
              for r in records if r.get("status") == "failed"]
    return {"sweep": spec.name, "constraints": {"max_drop": cs.max_drop, "max_latency_ms": cs.max_latency_ms,
                                                "objective": cs.objective},
            "trials": len(records), "candidates": cands, "groups": out_groups, "failed": failed}
