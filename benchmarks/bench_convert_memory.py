"""Conversion memory and time: ``edgeship convert`` against a bare ``TFLiteConverter`` script.

Issue 15, "Conversion memory": MobileNetV2 (``keras.applications``, ``weights=None``,
224x224) to INT8 with 100 calibration samples. Both sides get the same ``.keras`` file
and the same 100 preprocessed samples (crops of the two photographs that ship inside
scikit-learn, ``x / 127.5 - 1``, float32, saved as one ``.npy``):

* ``bare``: a fresh Python process that loads the model and runs
  ``tf.lite.TFLiteConverter.from_keras_model`` with full INT8 (int8 I/O, a
  representative dataset over the 100 samples), then writes the file;
* ``edgeship``: the ``edgeship convert`` CLI in a fresh process
  (``--precision int8 --io int8 --calib samples.npy --calib-count 100``), which also
  validates, writes the report (with latency) and the manifest.

Runs are paired and alternated (bare, edgeship, then edgeship, bare, ...). For each
process: wall time, the peak RSS the kernel records for it (``ru_maxrss`` from
``wait4``: the largest of the process and of any child it waited for), and the peak of
the summed RSS of its whole process tree sampled every 0.1 s from ``/proc``.
Targets: peak RSS <= 1.5x and wall time <= 1.3x the bare script's (medians).

    python benchmarks/bench_convert_memory.py [--pairs 3] [--quick]

Writes ``benchmarks/results/convert_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
TARGET_RSS_RATIO = 1.5
TARGET_WALL_RATIO = 1.3

BARE_SCRIPT = r"""
import sys, numpy as np, tensorflow as tf, keras
model_path, samples_path, out_path = sys.argv[1:4]
model = keras.models.load_model(model_path)
x = np.load(samples_path)
def representative():
    for i in range(len(x)):
        yield [x[i:i + 1]]
conv = tf.lite.TFLiteConverter.from_keras_model(model)
conv.optimizations = [tf.lite.Optimize.DEFAULT]
conv.representative_dataset = representative
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
conv.inference_input_type = tf.int8
conv.inference_output_type = tf.int8
with open(out_path, "wb") as fh:
    fh.write(conv.convert())
"""


def make_samples(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` square crops (random position and scale) of scikit-learn's sample photos, resized to
    ``size`` and scaled like MobileNetV2 expects (``x / 127.5 - 1``), float32 NHWC."""
    from sklearn.datasets import load_sample_images  # noqa: PLC0415

    from edgeship.preprocess import opencv as _cv2  # noqa: PLC0415

    cv2 = _cv2()
    photos = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        c = int(min(h, w) * rng.uniform(0.3, 1.0))
        y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        crop = cv2.resize(img[y:y + c, x:x + c], (size, size), interpolation=cv2.INTER_AREA)
        out[i] = crop.astype(np.float32) / 127.5 - 1.0
    return out


def _tree_rss(root: int) -> int:
    """Summed RSS (bytes) of ``root`` and its descendants, from /proc."""
    children: dict = {}
    rss: dict = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                st = fh.read()
            fields = st[st.rindex(")") + 2:].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
        rss[int(d)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, ()))
    return total


def run_measured(cmd: list, *, env: dict | None = None, interval: float = 0.1) -> dict:
    """Run ``cmd``; wall seconds, kernel peak RSS (``ru_maxrss``) and the sampled peak of the tree's RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    peak = {"tree": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak["tree"] = max(peak["tree"], _tree_rss(proc.pid))
            done.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    # read the pipes without blocking the child, then reap it with wait4 for its rusage
    chunks = {"out": [], "err": []}

    def drain(stream, key):
        for line in iter(stream.readline, b""):
            chunks[key].append(line)

    readers = [threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True)]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    res = {"wall_s": wall, "peak_rss_bytes": usage.ru_maxrss * 1024, "tree_rss_peak_bytes": peak["tree"],
           "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "rc": proc.returncode}
    if proc.returncode != 0:
        res["stderr_tail"] = b"".join(chunks["err"]).decode(errors="replace")[-2000:]
    return res


def _own_rss_kb() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def prepare(folder: str, *, size: int, alpha: float, classes: int, n: int, say=print) -> dict:
    import keras  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), alpha=alpha, classes=classes)
    model_path = os.path.join(folder, "model.keras")
    model.save(model_path)
    samples = os.path.join(folder, "samples.npy")
    np.save(samples, make_samples(n, size))
    say(f"model {model_path} ({os.path.getsize(model_path) / 1e6:.1f} MB), {n} samples {samples}")
    return {"model": model_path, "samples": samples}


def measure(*, pairs: int = 3, size: int = 224, alpha: float = 1.0, classes: int = 1000, n: int = 100,
            say=print) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    exe = os.path.join(os.path.dirname(sys.executable), "edgeship")
    cli = [exe] if os.path.isfile(exe) else [sys.executable, "-m", "edgeship.cli"]
    with tempfile.TemporaryDirectory(prefix="edgeship-convmem-") as folder:
        # Built in a child: this parent stays small, because Linux starts a child's ru_maxrss at
        # the RSS of the process it was forked (or vforked) from.
        code = (f"import sys; sys.path.insert(0, {BENCH_DIR!r}); import bench_convert_memory as b; "
                f"b.prepare({folder!r}, size={size}, alpha={alpha}, classes={classes}, n={n})")
        made = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        if made.returncode:
            raise RuntimeError(f"building the model and samples failed:\n{made.stderr[-2000:]}")
        say(made.stdout.strip())
        files = {"model": os.path.join(folder, "model.keras"), "samples": os.path.join(folder, "samples.npy")}
        parent_kb = _own_rss_kb()
        bare_cmd = [sys.executable, "-c", BARE_SCRIPT, files["model"], files["samples"],
                    os.path.join(folder, "bare.tflite")]
        edge_cmd = cli + ["convert", files["model"], "-o", os.path.join(folder, "bundle"), "--precision", "int8",
                          "--io", "int8", "--calib", files["samples"], "--calib-count", str(n),
                          "--task", "classification", "--force"]
        runs: dict = {"bare": [], "edgeship": []}
        for i in range(pairs):
            order = ("bare", "edgeship") if i % 2 == 0 else ("edgeship", "bare")
            for kind in order:
                r = run_measured(bare_cmd if kind == "bare" else edge_cmd, env=env)
                say(f"pair {i + 1}/{pairs} {kind:8s}: wall {r['wall_s']:.1f} s, peak RSS "
                    f"{r['peak_rss_bytes'] / 2**30:.2f} GiB (tree {r['tree_rss_peak_bytes'] / 2**30:.2f} GiB), "
                    f"user {r['user_s']:.1f} s, sys {r['sys_s']:.1f} s" + (f", FAILED rc={r['rc']}" if r["rc"] else ""))
                if r["rc"]:
                    raise RuntimeError(f"{kind} failed (rc={r['rc']}):\n{r.get('stderr_tail', '')}")
                runs[kind].append(r)
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("wall_s", "peak_rss_bytes", "tree_rss_peak_bytes",
                                                                "user_s", "sys_s")}
           for k, v in runs.items()}
    rss_ratio = med["edgeship"]["peak_rss_bytes"] / med["bare"]["peak_rss_bytes"]
    tree_ratio = med["edgeship"]["tree_rss_peak_bytes"] / med["bare"]["tree_rss_peak_bytes"]
    wall_ratio = med["edgeship"]["wall_s"] / med["bare"]["wall_s"]
    return {
        "model": f"MobileNetV2 {size}x{size} alpha {alpha} classes {classes} (weights=None)",
        "samples": n, "pairs": pairs, "runs": runs, "median": med,
        "ratio_peak_rss": rss_ratio, "ratio_tree_rss": tree_ratio, "ratio_wall": wall_ratio,
        "target_peak_rss": f"<= {TARGET_RSS_RATIO}x", "target_wall": f"<= {TARGET_WALL_RATIO}x",
        "pass_peak_rss": max(rss_ratio, tree_ratio) <= TARGET_RSS_RATIO, "pass_wall": wall_ratio <= TARGET_WALL_RATIO,
        "command": " ".join(edge_cmd[1:]).replace(folder, "<tmp>"),
        "parent_rss_bytes": parent_kb * 1024,  # the floor of every child's ru_maxrss
    }


def rows(*, quick: bool = False, pairs: int | None = None, say=print) -> list:
    """Rows for ``benchmarks/run.py``: the figures of :func:`measure` (quick: a small MobileNetV2)."""
    # In a fresh process: the harness has TensorFlow loaded, and a child's ru_maxrss starts at
    # the RSS of the process that spawned it.
    path = os.path.join(RESULTS_DIR, "convert_memory-quick.json" if quick else "convert_memory.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--pairs", str(pairs or (1 if quick else 3)), "--json", path]
    done = subprocess.run(cmd + (["--quick"] if quick else []), capture_output=True, text=True)
    for line in done.stderr.splitlines():
        if line.startswith(("pair ", "model ")):
            say(line)
    if done.returncode:
        raise RuntimeError(f"bench_convert_memory.py failed (rc={done.returncode}): {done.stderr[-1500:]}")
    with open(path) as fh:
        res = json.load(fh)
    med = res["median"]
    return [
        {"key": "bare_peak_rss_gib", "label": "bare TFLiteConverter: peak RSS", "value": med["bare"]["peak_rss_bytes"] / 2**30, "unit": "GiB"},
        {"key": "edgeship_peak_rss_gib", "label": "edgeship convert: peak RSS", "value": med["edgeship"]["peak_rss_bytes"] / 2**30, "unit": "GiB"},
        {"key": "ratio_peak_rss", "label": "edgeship / bare, peak RSS (max of kernel and sampled tree)",
         "value": max(res["ratio_peak_rss"], res["ratio_tree_rss"]), "unit": "x",
         "target": res["target_peak_rss"], "pass": res["pass_peak_rss"]},
        {"key": "bare_wall_s", "label": "bare TFLiteConverter: wall", "value": med["bare"]["wall_s"], "unit": "s"},
        {"key": "edgeship_wall_s", "label": "edgeship convert: wall", "value": med["edgeship"]["wall_s"], "unit": "s"},
        {"key": "ratio_wall", "label": "edgeship / bare, wall time", "value": res["ratio_wall"], "unit": "x",
         "target": res["target_wall"], "pass": res["pass_wall"]},
    ]


def _write(res: dict, path: str | None = None) -> str:
    path = path or os.path.join(RESULTS_DIR, "convert_memory.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump({**res, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, fh, indent=2)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3, help="paired, alternated runs (median reported; default 3)")
    p.add_argument("--quick", action="store_true", help="a small MobileNetV2 (96x96, alpha 0.35, 10 classes, 20 samples)")
    p.add_argument("--json", default=None, help="default benchmarks/results/convert_memory.json")
    args = p.parse_args(argv)
    say = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    opts = dict(size=96, alpha=0.35, classes=10, n=20) if args.quick else {}
    res = measure(pairs=args.pairs, say=say, **opts)
    path = _write(res, args.json)
    med = res["median"]
    print(f"{res['model']}, {res['samples']} samples, median of {res['pairs']} pairs")
    for k in ("bare", "edgeship"):
        print(f"  {k:8s}: wall {med[k]['wall_s']:.1f} s, peak RSS {med[k]['peak_rss_bytes'] / 2**30:.2f} GiB "
              f"(tree {med[k]['tree_rss_peak_bytes'] / 2**30:.2f} GiB), sys {med[k]['sys_s']:.1f} s")
    print(f"  peak RSS ratio {res['ratio_peak_rss']:.2f}x (tree {res['ratio_tree_rss']:.2f}x, target "
          f"{res['target_peak_rss']}): {'PASS' if res['pass_peak_rss'] else 'MISS'}")
    print(f"  wall ratio {res['ratio_wall']:.2f}x (target {res['target_wall']}): "
          f"{'PASS' if res['pass_wall'] else 'MISS'}")
    print(f"  written {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
