"""``bench --all --save``: pick the fastest artifact x engine that keeps the outputs, and record it.

From the table :func:`edgeship.benchtool.bench_all` measured (each combination
in a fresh process), the candidates are tried fastest first: each is loaded
(``strict``: exactly that artifact on that engine) and run on the bundle's
calibration samples, and its outputs are compared with a reference: the
bundle's FP32 artifact on the default engine when it has one, else the default
combination (what ``load(path)`` runs). The first candidate whose top-1
agreement (cosine similarity for outputs that are not class scores) reaches
``min_agreement``, and whose artifact reached it against the source model at
conversion (the manifest's validation), is chosen; the default combination is always a candidate, so
the choice is never slower than the default by construction. The record goes
to :mod:`edgeship.runtime.choices`; ``load(path, backend="auto")`` uses it.
"""

from __future__ import annotations

import time

import numpy as np

from .errors import BundleError, InputError

__all__ = ["measure_and_save", "pick"]


def _samples(path: str, model, count: int) -> np.ndarray:
    import os  # noqa: PLC0415

    from .safeio import load_npz  # noqa: PLC0415

    calib = os.path.join(path, "calibration.npz")
    if len(model.inputs) != 1 or not os.path.isfile(calib) or os.path.islink(calib):
        raise InputError(f"bench --all --save checks every engine's outputs on the bundle's calibration samples; "
                         f"{path} has no calibration.npz for its single input (convert it with --calib)")
    x = load_npz(calib, ("x",), error=BundleError).get("x")
    if x is None or x.ndim < 1 or x.shape[0] == 0:
        raise InputError(f"{calib} holds no samples under 'x'")
    return np.asarray(x[:count], dtype=np.float32)


def _outputs(path: str, artifact: str, backend: str | None, x: np.ndarray, **kw) -> list:
    from . import runtime  # noqa: PLC0415

    with runtime.load(path, artifact=artifact, backend=backend, **kw) as m:
        return [np.asarray(v) for v in m.run(x).values()]


def _agreement(ref: list, out: list) -> dict:
    from .metrics import compare  # noqa: PLC0415

    tops, coss = [], []
    for r, o in zip(ref, out):
        c = compare(r, o)
        coss.append(c["cosine"])
        if c.get("top1_agreement") is not None:
            tops.append(c["top1_agreement"])
    return {"top1_agreement": min(tops) if tops else None, "cosine": min(coss) if coss else None}


def _passes(m: dict, min_agreement: float) -> bool:
    v = m["top1_agreement"] if m["top1_agreement"] is not None else m["cosine"]
    return v is not None and v >= min_agreement


def pick(path: str, res: dict, *, samples: int = 64, min_agreement: float = 0.99) -> dict:
    """The record for ``res`` (a :func:`bench_all` result): ``choice``, ``default``, ``reference``, ``candidates``."""
    from . import manifest as _manifest  # noqa: PLC0415
    from . import runtime  # noqa: PLC0415

    man = _manifest.read(path)
    arts = {a["file"]: a for a in man["artifacts"]}
    with runtime.load(path) as m:
        default = (m.artifact["file"], m.info.backend)
        x = _samples(path, m, samples)
    fp32 = [a["file"] for a in man["artifacts"] if a.get("precision") == "fp32"]
    ref_art, ref_backend = (fp32[0], None) if fp32 else default
    ref = _outputs(path, ref_art, ref_backend, x)
    rows = [c for c in res["combinations"]
            if not c.get("skipped") and not c.get("delegate") and not c.get("fallback") and c.get("p50_ms")]
    rows.sort(key=lambda c: c["p50_ms"])
    default_row = next((c for c in rows if (c["artifact"], c["backend"]) == default), None)
    if default_row is None:
        raise InputError(f"bench --all did not measure the default combination {default[0]} on {default[1]}; "
                         "cannot save a choice")
    candidates, chosen = [], None
    for c in rows:
        if c["p50_ms"] > default_row["p50_ms"]:
            break
        try:
            out = _outputs(path, c["artifact"], c["backend"], x, strict=True)
            m = _agreement(ref, out)
        except Exception as exc:  # noqa: BLE001 - a combination that fails here is not a candidate
            m = {"top1_agreement": None, "cosine": None, "error": f"{type(exc).__name__}: {exc}"}
        src = ((man.get("validation") or {}).get("artifacts") or {}).get(c["artifact"]) or {}
        if src.get("top1_agreement") is not None:  # the artifact against the source, measured by convert
            m["source_top1_agreement"] = float(src["top1_agreement"])
        ok = ("error" not in m and _passes(m, min_agreement)
              and m.get("source_top1_agreement", 1.0) >= min_agreement)
        candidates.append({"artifact": c["artifact"], "backend": c["backend"], "p50_ms": c["p50_ms"], **m,
                           "passes": ok})
        if ok or c is default_row:
            chosen = (c, m)
            break
    c, m = chosen
    what = "top-1 agreement" if m.get("top1_agreement") is not None else "cosine"
    val = m.get("top1_agreement") if m.get("top1_agreement") is not None else m.get("cosine")
    measured = len(rows)
    if c is default_row and c is rows[0]:
        reason = (f"{c['artifact']} on {c['backend']}: the default, fastest of {measured} measured "
                  f"(p50 {c['p50_ms']:.3f} ms); {what} {val:.3f} with {ref_art} on {len(x)} calibration samples")
    elif c is default_row:
        reason = (f"{c['artifact']} on {c['backend']}: the default; the {len(candidates) - 1} faster of {measured} "
                  f"measured did not keep {what} >= {min_agreement} with {ref_art} on {len(x)} calibration samples")
    else:
        reason = (f"{c['artifact']} on {c['backend']}: fastest of {measured} measured, p50 {c['p50_ms']:.3f} ms "
                  f"vs {default_row['p50_ms']:.3f} ms for the default ({default[0]} on {default[1]}); "
                  f"{what} {val:.3f} with {ref_art} on {len(x)} calibration samples")
    if m.get("source_top1_agreement") is not None:
        reason += f", {m['source_top1_agreement']:.3f} with the source model at conversion"
    art = arts[c["artifact"]]
    return {
        "choice": {"artifact": c["artifact"], "sha256": art["sha256"], "format": art["format"],
                   "precision": art["precision"], "backend": c["backend"], "p50_ms": c["p50_ms"],
                   "runs_on": c.get("runs_on"), **{k: v for k, v in m.items() if k != "error"}, "reason": reason},
        "default": {"artifact": default[0], "backend": default[1], "p50_ms": default_row["p50_ms"]},
        "reference": {"artifact": ref_art, "samples": int(len(x)), "min_agreement": min_agreement},
        "candidates": candidates,
        "measured": [{"artifact": r["artifact"], "backend": r["backend"], "p50_ms": r["p50_ms"]} for r in rows],
        "threads": res.get("threads"), "runs": res.get("runs"),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def measure_and_save(path: str, res: dict, **kw) -> dict:
    """:func:`pick`, then write it to the per-machine cache; returns the record with its ``path``."""
    from . import manifest as _manifest  # noqa: PLC0415
    from .runtime import choices  # noqa: PLC0415

    rec = pick(path, res, **kw)
    rec["engine_versions"] = choices.installed_versions({r["backend"] for r in rec["measured"]})
    where = choices.save(_manifest.read(path), rec)
    return dict(rec, path=where)
