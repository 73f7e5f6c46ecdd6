"""Sweep benchmark: 12 trials of the demo digits model on a local Ray against the serial loop.

The trials are 4 precisions (fp32, fp16, dynamic, int8) x 3 settings (calibration
counts 50, 100, 200; the PNG calibration folder of ``edgeship demo``), evaluated on the
demo's test split and timed on LiteRT. Each side runs as ``edgeship sweep`` in a fresh
process into an empty sweep folder, so each pays its own start-up:

* serial: ``edgeship sweep SPEC --serial`` (no Ray: the trials one by one in one process);
* Ray:    ``edgeship sweep SPEC`` (``ray.init()`` starts a local Ray on all cores; conversions
  as Ray tasks, 1 CPU each; timings one at a time on this node, after the conversions).

Reported: both wall times, their ratio (target, issue 14: Ray <= 1.2x the serial loop on
2 cores), whether both gave the same records (settings, artifact sha256, bytes,
accuracy), and the Ray sweep's table.

    python benchmarks/bench_sweep.py [--workdir DIR] [--repeat N] [--json out.json] [--order serial,ray]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WORKDIR = os.path.join(HERE, "results", "cache", "sweep")
PRECISIONS = ["fp32", "fp16", "dynamic", "int8"]
CALIB_COUNTS = [50, 100, 200]
TARGET_RATIO = 1.2


def write_spec(workdir: str, demo: dict, output: str) -> str:
    labels = ", ".join(json.dumps(x) for x in demo["labels"])
    text = f"""[sweep]
name = "digits-12"
output = {json.dumps(output)}
cpus_per_trial = 1

[[model]]
name = "digits"
path = {json.dumps(demo["model_path"])}

[data]
calib = {json.dumps(demo["calib_dir"])}
eval = {json.dumps(demo["test_npz"])}
preprocess = {json.dumps(demo["preprocess"])}
labels = [{labels}]

[axes]
precision = {json.dumps(PRECISIONS)}
calib_count = {json.dumps(CALIB_COUNTS)}

[timing]
engines = ["litert"]
runs = 200
warmup = 20

[constraints]
max_drop = 1.0
max_latency_ms = 1.0
objective = "latency"
"""
    path = os.path.join(workdir, f"{output}.toml")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def run_side(spec: str, folder: str, serial: bool) -> dict:
    shutil.rmtree(folder, ignore_errors=True)
    env = dict(os.environ, EDGESHIP_PROGRESS="0", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "edgeship.cli", "sweep", spec, "--json"] + (["--serial"] if serial else [])
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr[-3000:]}")
    out = json.loads(p.stdout)
    tdir = os.path.join(out["folder"], "trials")
    recs = [json.load(open(os.path.join(tdir, f))) for f in sorted(os.listdir(tdir)) if f.endswith(".json")]
    return {"wall_s": wall, "out": out, "records": recs}


def comparable(records) -> dict:
    return {r["id"]: (r["status"], r["settings"], r["conversion"]["artifacts"]) for r in records}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    ap.add_argument("--order", default="serial,ray", help="which side runs first (default serial,ray)")
    ap.add_argument("--repeat", type=int, default=1, help="pairs of runs, order alternating (default 1)")
    ap.add_argument("--json", default=None, help="write the figures here too")
    args = ap.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    from edgeship.demos.digits import prepare_model

    demo = prepare_model(os.path.join(args.workdir, "demo"))
    order = args.order.split(",")
    walls: dict = {"serial": [], "ray": []}
    sides = {}
    for rep in range(args.repeat):  # the order alternates between repeats: drift lands on both sides alike
        for side in (order if rep % 2 == 0 else order[::-1]):
            spec = write_spec(args.workdir, demo, f"{side}-out")
            print(f"[{rep + 1}/{args.repeat}] running the {side} sweep ...", file=sys.stderr, flush=True)
            sides[side] = run_side(spec, os.path.join(args.workdir, f"{side}-out"), serial=(side == "serial"))
            walls[side].append(sides[side]["wall_s"])
            print(f"  {side}: {sides[side]['wall_s']:.1f} s", file=sys.stderr, flush=True)
    s, r = sides["serial"], sides["ray"]
    ratios = [b / a for a, b in zip(walls["serial"], walls["ray"])]
    ratio = sorted(ratios)[len(ratios) // 2]
    same = comparable(s["records"]) == comparable(r["records"])
    from edgeship.converters.sweep.report import table

    print(table(r["out"]))
    print()
    print(f"12 trials (4 precisions x 3 calibration counts), {os.cpu_count()} cores")
    for i, (a, b) in enumerate(zip(walls["serial"], walls["ray"]), 1):
        print(f"repeat {i}: serial loop {a:.1f} s, local Ray {b:.1f} s, Ray / serial = {b / a:.2f}x")
    print(f"median Ray / serial = {ratio:.2f}x over {len(ratios)} repeat(s) "
          f"(target <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    print(f"same records (settings, artifact sha256/bytes/accuracy): {same}")
    conv = [x["conversion"]["seconds"] for x in r["records"]]
    print(f"Ray: {r['out']['counts']}; conversion seconds per trial {min(conv):.1f}..{max(conv):.1f}; "
          f"phases (s): {r['out'].get('phases')}; serial phases (s): {s['out'].get('phases')}")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          "(other work on the machine slows the parallel side most)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"serial_s": walls["serial"], "ray_s": walls["ray"], "ratios": ratios, "median_ratio": ratio,
                       "same_records": same, "load_average": os.getloadavg(),
                       "cores": os.cpu_count(), "target_ratio": TARGET_RATIO}, fh, indent=2)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
