"""Accelerator options of the CLI: ``--delegate``/``--device``/``--strict`` and ``edgeship devices``.

Registered by :mod:`edgeship.cli`: ``add_accel_arguments(parser)`` on ``run``
and ``bench``, ``load_kwargs(args)`` passed to ``runtime.load``, and
``add_devices_parser(sub)``. Follows the CLI's conventions: a user's mistake is
an ``EdgeshipError`` (exit 2, one line on stderr), ``--json`` prints exactly
one JSON object on stdout.
"""

from __future__ import annotations

import os

from .errors import InputError


def parse_delegate(spec: str) -> tuple[str, dict]:
    """``--delegate PATH[:key=value,...]`` -> ``(path, options)`` (see :func:`edgeship.runtime.accel.parse_delegate_spec`)."""
    from edgeship.runtime.accel import parse_delegate_spec  # noqa: PLC0415

    return parse_delegate_spec(spec)


def add_accel_arguments(parser) -> None:
    """``--delegate`` (repeatable), ``--device`` and ``--strict`` on a ``run``/``bench`` parser."""
    parser.add_argument("--delegate", action="append", default=None, metavar="PATH[:k=v,...]",
                        help="TFLite external delegate library with options, e.g. "
                             "libedgetpu.so.1:device=usb:0 (repeatable)")
    parser.add_argument("--device", default=None,
                        help="cpu, gpu, edgetpu, edgetpu:usb:0, ... (TFLite delegate or ONNX Runtime provider)")
    parser.add_argument("--strict", action="store_true",
                        help="fail instead of falling back when the delegate/device cannot be used")


def load_kwargs(args) -> dict:
    """The ``runtime.load`` keywords for the accelerator options in ``args`` (only those given)."""
    kw: dict = {}
    specs = getattr(args, "delegate", None)
    if specs:
        kw["delegate"] = [parse_delegate(s) for s in specs]
    if getattr(args, "device", None):
        kw["device"] = args.device
    if getattr(args, "strict", False):
        kw["strict"] = True
    return kw


def parse_targets(text: str) -> tuple:
    """``--target cpu,edgetpu`` -> ``("cpu", "edgetpu")`` (argparse ``type=``)."""
    from edgeship.converters.convert import TARGETS  # noqa: PLC0415 - the converter's list

    items = tuple(dict.fromkeys(t.strip().lower() for t in text.split(",") if t.strip()))
    bad = [t for t in items if t not in TARGETS]
    if not items or bad:
        import argparse  # noqa: PLC0415

        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma list of {', '.join(TARGETS)}")
    return items


def describe_info(info) -> str:
    """One line on what runs the model: backend, delegate, share of ops taken, fallbacks."""
    parts = [f"backend {info.backend}" + (f" {info.engine_version}" if info.engine_version else "")]
    if info.delegate:
        share = ""
        if info.ops_delegated is not None and info.ops_total:
            share = f" ({info.ops_delegated}/{info.ops_total} ops, {100.0 * info.ops_delegated / info.ops_total:.0f}%)"
        parts.append(f"delegate {info.delegate}{share}")
    if info.providers:
        parts.append("providers " + ", ".join(info.providers))
    parts.append(f"device {info.device}")
    line = "; ".join(parts)
    if info.fallback:
        line += " [FALLBACK: " + "; ".join(info.skipped) + "]"
    return line


# -- edgeship devices ----------------------------------------------------------------------


def cmd_devices(args) -> int:
    from .cli import _emit_json, _stdout_to_stderr  # noqa: PLC0415

    from edgeship.runtime.accel import devices  # noqa: PLC0415

    with _stdout_to_stderr(args.json) as out:
        model = getattr(args, "model", None)
        if model is not None and not os.path.isfile(model):
            raise InputError(f"--model {model!r} is not a file; pass a .tflite model")
        report = devices(try_load=not args.no_load, model=model)
        if args.json:
            _emit_json(out, report)
        else:
            out.write(format_devices(report))
            out.flush()
    return 0


def _mark(ok: bool) -> str:
    return "yes" if ok else "no "


def format_devices(r: dict) -> str:
    lines = ["TFLite interpreters"]
    for b in r["tflite"]:
        lines.append(f"  {_mark(b['available'])} {b['name']:<16} {b['version'] or ''}"
                     + ("" if b["available"] else f"  ({b['reason']})"))
    lines.append("TFLite delegates")
    for d in r["delegates"]:
        where = d["library"] or "-"
        lines.append(f"  {_mark(d['usable'])} {d['name']:<16} {where}" + (f"  ({d['reason']})" if d["reason"] else ""))
        if d["name"] == "edgetpu":
            lines.append(f"      Edge TPU devices: {', '.join(d.get('devices') or []) or 'none found (USB 1a6e:089a/18d1:9302, /dev/apex_*)'}")
    o = r["onnxruntime"]
    lines.append("ONNX Runtime")
    if o["available"]:
        lines.append(f"  yes onnxruntime {o['version']}: {', '.join(o['providers'])}")
    else:
        lines.append(f"  no  onnxruntime ({o['reason']})")
    c = r["litert_compiled_model"]
    lines.append("LiteRT CompiledModel")
    lines.append(f"  {_mark(c['available'])} accelerators {', '.join(c['accelerators']) or '-'}  ({c['reason']})")
    for pr in c.get("probe") or ():
        state = ("fully accelerated" if pr["fully_accelerated"] else "partly") if pr["usable"] else pr["reason"]
        lines.append(f"      {pr['accelerator']:<4} {_mark(pr['usable'])} {state}")
    g = r["gpu"]
    lines.append("GPU")
    lines.append(f"  NVIDIA driver: {_mark(g['nvidia']).strip()}; Jetson: {_mark(g['jetson']).strip()}; "
                 f"render nodes: {', '.join(g['dri_render_nodes']) or 'none'}")
    cpu = r["cpu"]
    lines.append(f"CPU {cpu['arch']} {cpu['model']} ({cpu['cpus']} CPUs): INT8 features")
    for f in cpu["features"]:
        lines.append(f"  {_mark(f['present'])} {f['flag']:<12} {f['meaning']}")
    return "\n".join(lines) + "\n"


def add_devices_parser(subparsers) -> None:
    d = subparsers.add_parser("devices", help="what this machine can run: interpreters, delegates, providers, CPU")
    d.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    d.add_argument("--no-load", action="store_true", help="only look for delegate libraries, do not load them")
    d.add_argument("--model", default=None, metavar="FILE.tflite",
                   help="also try LiteRT CompiledModel on each accelerator with this model")
    d.set_defaults(func=cmd_devices)

