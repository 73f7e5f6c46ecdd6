"""``edgeship sweep SPEC.toml``: every trial of a sweep spec as a Ray task, a Pareto table, the bundles to ship."""

from __future__ import annotations

import argparse

from .common import emit_json, quiet_tf_env, require_path, stdout_to_stderr


def cmd_sweep(args) -> int:
    quiet_tf_env()
    require_path(args.spec, "sweep spec")
    from edgeship.converters.sweep import load_spec, run_sweep  # noqa: PLC0415
    from edgeship.progress import pin_console  # noqa: PLC0415

    spec = load_spec(args.spec)
    pin_console(lines=True)
    with stdout_to_stderr(args.json) as out:
        res = run_sweep(spec, address=args.address, ship=args.ship, retry_failed=args.retry_failed,
                        serial=args.serial)
        if args.json:
            emit_json(out, {"folder": res.folder, "html": res.html, "counts": res.counts, "shipped": res.shipped,
                            "wall_s": res.wall_s, "phases": res.phases, **res.summary})
            return 0
        c = res.counts
        print(f"sweep {spec.name}: {c['trials']} trials ({c['skipped']} recorded before; this run converted "
              f"{c['converted']}, timed {c['timed']}, failed {c['failed']}) in {res.wall_s:.1f} s")
        print(res.table())
        print(f"records and bundles: {res.folder}\nreport: {res.html}")
        for target, path in res.shipped.items():
            print(f"shipped {target}: {path}")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    s = sub.add_parser("sweep", help="run a sweep spec (models x settings x targets) as Ray tasks; Pareto report")
    s.add_argument("spec", help="the sweep spec, a TOML file (see README: Sweeps)")
    s.add_argument("--address", default=None, metavar="ADDRESS",
                   help="Ray cluster to use, e.g. ray://HOST:10001 or auto (default: RAY_ADDRESS, else a local Ray "
                        "started for this sweep)")
    s.add_argument("--ship", default=None, metavar="DIR",
                   help="write the recommended bundle of each target to DIR/<target> (default: none)")
    s.add_argument("--retry-failed", action="store_true",
                   help="run the trials recorded as failed again (default: a failure is kept as a result)")
    s.add_argument("--serial", action="store_true",
                   help="no Ray: run the trials one after the other in this process (default: Ray)")
    s.add_argument("--json", action="store_true", help="print one JSON object on stdout (default: a table)")
    s.set_defaults(func=cmd_sweep)
    return s
