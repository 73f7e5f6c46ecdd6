"""``edgeship devices``: what this machine can run (interpreters, delegates, providers, OpenVINO, CPU features)."""

from __future__ import annotations

import argparse

from .common import emit_json, require_path, stdout_to_stderr


def cmd_devices(args) -> int:
    from edgeship.runtime.discovery import devices  # noqa: PLC0415

    model = getattr(args, "model", None)
    require_path(model, "--model")
    with stdout_to_stderr(args.json) as out:
        report = devices(try_load=not args.no_load, model=model)
        if args.json:
            emit_json(out, report)
        else:
            out.write(format_devices(report, everything=getattr(args, "all", False)))
            out.flush()
    return 0


def _mark(ok: bool) -> str:
    return "yes" if ok else "no "


def format_devices(r: dict, *, everything: bool = False) -> str:
    """The report as text: what can run here (``everything``: also what cannot, and why).

    A delegate found on the library path but not loaded (``--no-load``) is listed: it may run here.
    """
    missing: list = []
    lines = ["TFLite interpreters"]
    for b in r["tflite"]:
        if b["available"] or everything:
            lines.append(f"  {_mark(b['available'])} {b['name']:<16} {b['version'] or ''}"
                         + ("" if b["available"] else f"  ({b['reason']})"))
        else:
            missing.append(b["name"])
    lines.append("TFLite delegates")
    shown = 0
    for d in r["delegates"]:
        if not (d["usable"] or d.get("found") or everything):
            missing.append(f"{d['name']} delegate")
            continue
        shown += 1
        where = d["library"] or "-"
        lines.append(f"  {_mark(d['usable'])} {d['name']:<16} {where}" + (f"  ({d['reason']})" if d["reason"] else ""))
        if d["name"] == "edgetpu":
            lines.append(f"      Edge TPU devices: {', '.join(d.get('devices') or []) or 'none found (USB 1a6e:089a/18d1:9302, /dev/apex_*)'}")
    if not shown:
        lines.append("  none here")
    o = r["onnxruntime"]
    lines.append("ONNX Runtime")
    if o["available"]:
        lines.append(f"  yes onnxruntime {o['version']}: {', '.join(o['providers'])}")
    elif everything:
        lines.append(f"  no  onnxruntime ({o['reason']})")
    else:
        lines.append("  none here")
        missing.append("onnxruntime")
    v = r.get("openvino") or {}
    lines.append("OpenVINO")
    if v.get("available"):
        for d in v["devices"]:
            lines.append(f"  yes {d['name']:<16} {d['full_name'] or ''}"
                         + (f" ({', '.join(d['capabilities'])})" if d["capabilities"] else ""))
        lines.append(f"      openvino {v['version']}; devices OpenVINO does not list (GPU, NPU) need their driver")
    elif everything:
        lines.append(f"  no  openvino ({v.get('reason')})")
    else:
        lines.append("  none here")
        missing.append("openvino")
    c = r["litert_compiled_model"]
    lines.append("LiteRT CompiledModel")
    if c["available"] or everything:
        lines.append(f"  {_mark(c['available'])} accelerators {', '.join(c['accelerators']) or '-'}  ({c['reason']})")
    else:
        lines.append("  none here")
        missing.append("LiteRT CompiledModel")
    for pr in c.get("probe") or ():
        if not pr["usable"] and not everything:
            missing.append(f"CompiledModel {pr['accelerator']}")
            continue
        state = ("fully accelerated" if pr["fully_accelerated"] else "partly") if pr["usable"] else pr["reason"]
        lines.append(f"      {pr['accelerator']:<4} {_mark(pr['usable'])} {state}")
    g = r["gpu"]
    if g["nvidia"] or g["jetson"] or g["dri_render_nodes"] or everything:
        lines.append("GPU")
        lines.append(f"  NVIDIA driver: {_mark(g['nvidia']).strip()}; Jetson: {_mark(g['jetson']).strip()}; "
                     f"render nodes: {', '.join(g['dri_render_nodes']) or 'none'}")
    else:
        missing.append("GPU")
    cpu = r["cpu"]
    lines.append(f"CPU {cpu['arch']} {cpu['model']} ({cpu['cpus']} CPUs): INT8 features")
    for f in cpu["features"]:
        if f["present"] or everything:
            lines.append(f"  {_mark(f['present'])} {f['flag']:<12} {f['meaning']}")
    if missing:
        lines.append(f"not here: {', '.join(missing)} (edgeship devices --all says why)")
    return "\n".join(lines) + "\n"


def add_parser(sub) -> argparse.ArgumentParser:
    d = sub.add_parser("devices", help="what this machine can run: interpreters, delegates, providers, CPU")
    d.add_argument("--json", action="store_true", help="print the full report as one JSON object on stdout "
                                                       "(every engine, with available/usable and the reason)")
    d.add_argument("--all", action="store_true", help="also list what cannot run here, and why (default: only "
                                                      "what can)")
    d.add_argument("--no-load", action="store_true",
                   help="only look for delegate libraries, do not load them (default: load to check them)")
    d.add_argument("--model", default=None, metavar="FILE.tflite",
                   help="also try LiteRT CompiledModel on each accelerator with this model (default: none)")
    d.set_defaults(func=cmd_devices)
    return d
