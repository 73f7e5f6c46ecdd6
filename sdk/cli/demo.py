"""``edgeship demo``: train a small digits CNN, convert it to INT8 and FP32, measure both."""

from __future__ import annotations

import argparse

from .common import emit_json, quiet_tf_env, stdout_to_stderr

DEFAULT_WORKDIR = ".edgeship-demo"


def cmd_demo(args) -> int:
    quiet_tf_env()
    from edgeship.demos.digits import run_demo  # noqa: PLC0415

    with stdout_to_stderr(args.json) as out:
        figures = run_demo(args.workdir or DEFAULT_WORKDIR, force=args.force, quick=args.quick)
        if args.json:
            emit_json(out, figures)
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    d = sub.add_parser("demo", help="train a small digits CNN, convert it to INT8 and measure it")
    d.add_argument("--workdir", default=None, help=f"work folder (default {DEFAULT_WORKDIR})")
    d.add_argument("--force", action="store_true", help="retrain and rewrite the data even when cached (default: reuse)")
    d.add_argument("--quick", action="store_true", help="fewer latency runs (default: 300 per model)")
    d.add_argument("--json", action="store_true", help="print the figures as one JSON object on stdout")
    d.set_defaults(func=cmd_demo)
    return d
