"""``edgeship report``: rebuild a bundle's ``report.md`` and ``report.html``."""

from __future__ import annotations

import argparse
import os

from .common import emit_json, require_path, stdout_to_stderr


def cmd_report(args) -> int:
    require_path(args.path, "model")
    require_path(args.source, "--source")
    from edgeship.converters.report import build_report  # noqa: PLC0415

    with stdout_to_stderr(args.json) as out:
        md, html = build_report(args.path, source_model=args.source, latency=not args.no_latency)
        if args.json:
            emit_json(out, {"bundle": os.path.abspath(args.path), "markdown": md, "html": html})
        else:
            print(f"wrote {md}\nwrote {html}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    rp = sub.add_parser("report", help="rebuild a bundle's report.md and report.html")
    rp.add_argument("path", help="bundle folder")
    rp.add_argument("--source", metavar="MODEL",
                    help="the source model file, for the size comparison when the manifest's source path is gone "
                         "(default: the manifest's source path)")
    rp.add_argument("--no-latency", action="store_true", help="skip the latency measurement (default: measure)")
    rp.add_argument("--json", action="store_true", help="print the written paths as one JSON object on stdout")
    rp.set_defaults(func=cmd_report)
    return rp
