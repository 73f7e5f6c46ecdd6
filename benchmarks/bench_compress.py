"""Compression that trains, measured end to end through ``convert()`` and ``edgeship.runtime``.

Rows (issue 13, "Done when"): the dense teacher CNN (conv 64 -> conv 128 -> dense 256, ~10M MACs:
large enough that compute, not the runtime's per-call overhead, sets its batch-1 latency; FP32 and
post-training INT8); QAT on a model built so that post-training INT8 loses points (the teacher with
one ``fc1`` unit scaled ``--outlier`` times and the next layer divided by as much: the same
function, a per-tensor activation range swamped by one unit); a distilled student (``--width``)
beside the same student trained on labels alone, per seed (``--seeds``); low-rank ``auto``
(``--energy``).

Epoch budget, the same for every row: a model trained from scratch (teacher, distilled student)
gets ``--epochs`` over the 60,000 training images; a fine-tuning stage (low-rank, QAT) gets
``--finetune-epochs``. Distillation setting (``--labelled``): the teacher learnt from all the
labels; the student's training data are the same 60,000 images with only ``--labelled`` of them
labelled (the others y = -1: soft targets alone), the situation distillation is for (a teacher,
many images, few labels). The same student trained on labels alone sees the labelled images only,
for as many optimizer steps as the distilled run (same seed, same initial weights, same schedule).
Latency: batch 1 through ``edgeship.runtime`` ``Model.run`` on 1 thread, every bundle interleaved in one loop.

Accuracy: every INT8 artifact runs through ``edgeship.runtime`` on the whole test set (10,000 Fashion-MNIST
images: 0.01 point per image), and so do the FP32 Keras models the script holds (teacher, outlier models,
distilled student, labels-only student); the issue's checks are judged on these figures. ``convert()``'s
own validation (a seeded 1,000-image sample of the test set, 0.1 point per image) is reported beside them.
The labels-only student is converted to INT8 like the distilled one and measured on the same images.

Data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``)
when installed, else scikit-learn's digits upsampled to 28x28 (the output says which).

The student is derived from the teacher with the same ``derive_student`` call ``convert`` makes for
``--student-width`` (here by the script, which passes it to ``convert`` as ``student=`` and so keeps the
trained Keras model for its FP32 figure); it starts from seeded random weights (``--student-init random``,
the default) or from the teacher's largest-L1 filters (``teacher``), and so does its labels-only baseline,
a copy of the same initial weights trained by ``distill``'s own ``train_labels_only``. ``--only distill``
runs the dense teacher and the distillation rows alone (to iterate; the README's figures come from a
full run).

    python benchmarks/bench_compress.py [--dataset auto|fashion|digits] [--epochs N] [--labelled N]
                                        [--seeds 0,1] [--student-init random|teacher] [--only distill]
                                        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_prune import load_dataset  # noqa: E402


def build_teacher(keras, shape=(28, 28, 1), classes=10, padding="valid"):
    """bench_prune's CNN four times wider in the convolutions, twice in fc1 (~10M MACs on 28x28;
    ``padding="same"``: the convolutions keep the borders, ~16.5M MACs)."""
    return keras.Sequential([
        keras.Input(shape),
        keras.layers.Conv2D(64, 3, activation="relu", padding=padding, name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(128, 3, activation="relu", padding=padding, name="conv2"),
        keras.layers.MaxPooling2D(name="pool2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(256, activation="relu", name="fc1"),
        keras.layers.Dense(classes, name="logits"),
    ], name="cnn")


def latency_ms(bundles: dict, x: np.ndarray, runs: int = 600) -> dict:
    """p50 latency (ms) of one sample through ``edgeship.runtime`` per bundle (1 thread), interleaved."""
    import edgeship.runtime as rt  # noqa: PLC0415
    from _timing import interleaved  # noqa: PLC0415

    models = {k: rt.load(v, threads=1) for k, v in bundles.items()}  # one core: what an edge CPU gives a model
    sample = x[:1]
    try:
        res = interleaved({k: (lambda m=m: m.run(sample)) for k, m in models.items()}, runs=runs)
    finally:
        for m in models.values():
            m.close()
    return {k: round(v["p50"], 4) for k, v in res.items()}


def runtime_accuracy(bundle: str, x: np.ndarray, y: np.ndarray, chunk: int = 1000) -> float:
    """Top-1 accuracy (0..1) of a bundle's artifact through ``edgeship.runtime`` on all of ``(x, y)``."""
    import edgeship.runtime as rt  # noqa: PLC0415

    m = rt.load(bundle)
    try:
        pred = np.concatenate([np.argmax(next(iter(m.run(x[s : s + chunk]).values())), -1)
                               for s in range(0, len(x), chunk)])
    finally:
        m.close()
    return float(np.mean(pred == np.asarray(y).reshape(-1)))


def outlier_copy(keras, model, scale: float):
    """``model`` with fc1 unit 0 scaled ``scale`` times and logits' row 0 divided: the same function."""
    m = keras.models.clone_model(model)
    m.set_weights(model.get_weights())
    fc1, logits = m.get_layer("fc1"), m.get_layer("logits")
    k, b = fc1.get_weights()
    k[:, 0] *= scale
    b[0] *= scale
    fc1.set_weights([k, b])
    k2, b2 = logits.get_weights()
    k2[0, :] /= scale
    logits.set_weights([k2, b2])
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="auto", choices=("auto", "fashion", "digits"))
    ap.add_argument("--epochs", type=int, default=None, help="epochs of every model trained from scratch")
    ap.add_argument("--finetune-epochs", type=int, default=None, help="epochs of every fine-tuning stage")
    ap.add_argument("--width", type=float, default=0.5, help="student width multiplier (default 0.5)")
    ap.add_argument("--energy", type=float, default=0.6, help="low-rank auto energy budget (default 0.6)")
    ap.add_argument("--outlier", type=float, default=200.0, help="fc1 unit-0 scale of the QAT row (default 200)")
    ap.add_argument("--train-limit", type=int, default=None, help="use at most this many training samples")
    ap.add_argument("--labelled", type=int, default=None,
                    help="labelled images in the student's training data (default 2000; digits 100)")
    ap.add_argument("--seeds", default="0,1", help="seeds of the distillation rows (default 0,1)")
    ap.add_argument("--temperature", type=float, default=1.0, help="distillation temperature (default 1)")
    ap.add_argument("--alpha", type=float, default=0.1, help="label-loss weight of distillation (default 0.1)")
    ap.add_argument("--student-init", default="random", choices=("random", "teacher"),
                    help="the derived student's initial weights (default random, seeded; teacher: its largest-L1 "
                         "filters; the labels-only baseline starts from the same ones)")
    ap.add_argument("--student-depth", type=int, default=None,
                    help="the derived student keeps the teacher's first N conv blocks (default: all)")
    ap.add_argument("--augment", default=None, choices=("flip",),
                    help="distillation: mirror a seeded half of the images each epoch (the baseline too)")
    ap.add_argument("--distill-lr", type=float, default=2e-3,
                    help="the student's peak learning rate, distilled and labels-only alike (default 2e-3)")
    ap.add_argument("--padding", default="valid", choices=("valid", "same"), help="the teacher's conv padding")
    ap.add_argument("--only", default=None, choices=("distill",),
                    help="run only these rows (the dense teacher and the distilled students): to iterate faster")
    ap.add_argument("--test-limit", type=int, default=None, help="test samples (default: all)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    import keras  # noqa: PLC0415

    from edgeship.converters import convert  # noqa: PLC0415
    from edgeship.converters.compress import CompressOptions, count_macs, count_params  # noqa: PLC0415
    from edgeship.converters.compress.distill import derive_student, labels_only_epochs, train_labels_only  # noqa: PLC0415
    from edgeship.converters.compress.training import accuracy  # noqa: PLC0415

    name, xtr, ytr, xte, yte = load_dataset(args.dataset)
    if args.train_limit:
        xtr, ytr = xtr[: args.train_limit], ytr[: args.train_limit]
    if args.test_limit:
        xte, yte = xte[: args.test_limit], yte[: args.test_limit]
    labelled = args.labelled or (2000 if name == "fashion-mnist" else 100)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    epochs = args.epochs or (3 if name == "fashion-mnist" else 12)
    ft = args.finetune_epochs or (1 if name == "fashion-mnist" else 3)
    print(f"dataset: {name} ({len(xtr)} train, {len(xte)} test); epochs {epochs} (from scratch), {ft} (fine-tuning)",
          file=sys.stderr)
    keras.utils.set_random_seed(0)
    teacher = build_teacher(keras, padding=args.padding)
    teacher.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    t0 = time.perf_counter()
    teacher.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=0)
    print(f"teacher: {count_macs(teacher):,} MACs, trained in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    work = tempfile.mkdtemp(prefix="bench-compress-")
    calib = xtr[:200]
    common = dict(calib=calib, eval_data=(xte, yte), calib_count=200)
    rows, bundles = {}, {}

    def run(label, model, fp32=None, **kw):
        """Convert ``model``; ``fp32``: the Keras model whose FP32 accuracy on the test set goes in the row."""
        out = os.path.join(work, label.replace(" ", "_"))
        res = convert(model, out, **common, **kw)
        art = res.manifest["artifacts"][0]
        v = res.manifest["validation"]["artifacts"][art["file"]]
        bundles[label] = res.bundle
        comp = res.manifest.get("compression") or {}
        last = [r for r in comp.get("stages", []) if r.get("params") is not None]
        final_model = last[-1] if last else None
        rows[label] = {"params": final_model["params"] if final_model else count_params(model),
                       "macs": final_model["macs"] if final_model else count_macs(model),
                       "bytes": art["bytes"], "gzip_bytes": art["gzip_bytes"],
                       "int8_accuracy": v["accuracy"], "source_accuracy": v["source_accuracy"],
                       "test_int8_accuracy": runtime_accuracy(res.bundle, xte, yte),
                       "test_fp32_accuracy": accuracy(fp32, xte, yte) if fp32 is not None else None}
        return res

    run("dense INT8 (PTQ)", teacher, fp32=teacher)
    fp32_acc = rows["dense INT8 (PTQ)"]["source_accuracy"]
    full = args.only is None
    if full:  # QAT: a model post-training INT8 hurts
        bad = outlier_copy(keras, teacher, args.outlier)
        run("outlier INT8 (PTQ)", bad, fp32=bad)
        from edgeship.converters.compress.equalize import equalize_pairs  # noqa: PLC0415

        eq = keras.models.clone_model(bad)
        eq.set_weights(bad.get_weights())
        equalize_pairs(eq)
        run("outlier INT8 (PTQ after equalization)", eq, fp32=eq)  # the share of QAT's result its cross-layer equalization gives
        run("outlier INT8 (QAT)", bad, train_data=(xtr, ytr),
            compress=CompressOptions(qat=True, qat_epochs=ft, qat_lr=1e-4))
    # distillation
    y_part = np.asarray(ytr).astype(np.int64).copy()
    y_part[np.random.default_rng(0).permutation(len(y_part))[labelled:]] = -1  # soft targets alone there
    has_label = y_part >= 0
    dist, plain_rows = {}, {}
    for seed in seeds:
        suffix = "" if seed == seeds[0] else f" seed {seed}"
        # what convert does for student_width=args.width, done here to keep the trained student
        student = derive_student(teacher, args.width, seed=seed, init=args.student_init, depth=args.student_depth)
        plain = keras.models.clone_model(student)  # the labels-only baseline: the same initial weights
        plain.build(tuple(student.inputs[0].shape))
        plain.set_weights(student.get_weights())
        res = run("student INT8 (distilled)" + suffix, teacher, fp32=student, train_data=(xtr, y_part), seed=seed,
                  compress=CompressOptions(distill=True, student=student, distill_epochs=epochs,
                                           distill_augment=args.augment, distill_lr=args.distill_lr,
                                           temperature=args.temperature, alpha=args.alpha))
        dist[seed] = res.manifest["compression"]["distill"]
        dist[seed]["student_init"] = student.edgeship_init
        train_labels_only(plain, xtr[has_label], y_part[has_label], seed=seed, lr=args.distill_lr, augment=args.augment,
                          epochs=labels_only_epochs(epochs, len(xtr), int(has_label.sum())))
        plain_rows[seed] = "student INT8 (labels only)" + suffix
        run(plain_rows[seed], plain, fp32=plain)
    d = dist[seeds[0]]
    if full:  # low-rank
        res_lr = run("low-rank auto INT8", teacher, train_data=(xtr, ytr),
                     compress=CompressOptions(low_rank="auto", low_rank_energy=args.energy, low_rank_epochs=ft))
        lr_rows = {r["stage"]: r for r in res_lr.manifest["compression"]["stages"]}
    lat = latency_ms(bundles, xte)
    for k, v in lat.items():
        rows[k]["latency_ms_p50"] = v

    dense = rows["dense INT8 (PTQ)"]
    stu = rows["student INT8 (distilled)"]
    students = {seed: rows["student INT8 (distilled)" + ("" if seed == seeds[0] else f" seed {seed}")] for seed in seeds}
    t_fp32 = dense["test_fp32_accuracy"]
    for seed, r in students.items():  # 10,000 test images, through the runtime (INT8) and Keras (FP32)
        p = rows[plain_rows[seed]]
        dist[seed].update({"test_teacher_int8": dense["test_int8_accuracy"], "test_teacher_fp32": t_fp32,
                           "test_student_int8": r["test_int8_accuracy"], "test_student_fp32": r["test_fp32_accuracy"],
                           "test_labels_only_int8": p["test_int8_accuracy"],
                           "test_labels_only_fp32": p["test_fp32_accuracy"]})
    out = {
        "dataset": name, "only": args.only, "teacher_padding": args.padding, "student_init": args.student_init,
        "student_depth": args.student_depth, "augment": args.augment, "distill_lr": args.distill_lr,
        "epochs": epochs, "finetune_epochs": ft, "width": args.width, "energy": args.energy,
        "outlier_scale": args.outlier, "teacher_fp32_accuracy": fp32_acc, "teacher_test_fp32_accuracy": t_fp32,
        "test_count": int(len(xte)), "rows": rows, "labelled": labelled, "seeds": seeds,
        "distill": {seed: {k: dd.get(k) for k in ("teacher_accuracy", "student_accuracy", "labels_only_accuracy",
                                                  "teacher_macs", "student_macs", "temperature", "alpha", "epochs",
                                                  "labels_only_epochs", "train_count", "labelled_count", "student_init")
                           + tuple(k for k in dd if k.startswith("test_"))}
                    for seed, dd in dist.items()},
    }
    pts = lambda a, b: 100 * (a - b)  # noqa: E731
    checks = {}
    if full:
        lowr = rows["low-rank auto INT8"]
        out["low_rank_fp32_accuracy"] = lr_rows["low_rank"]["accuracy"]
        out["low_rank_ranks"] = {r["name"]: [r["rank"], r["full_rank"]]
                                 for r in res_lr.manifest["compression"]["low_rank"]["layers"]}
        checks.update({
            "qat: PTQ loses > 2 points": pts(t_fp32, rows["outlier INT8 (PTQ)"]["test_int8_accuracy"]) > 2,
            "qat: within 0.5 points of FP32": pts(t_fp32, rows["outlier INT8 (QAT)"]["test_int8_accuracy"]) <= 0.5,
        })
    checks.update({
        "distill: <= 0.3x MACs": stu["macs"] <= 0.3 * dense["macs"],
        "distill: within 1.5 points of the teacher INT8 (every seed)": all(
            pts(dense["test_int8_accuracy"], r["test_int8_accuracy"]) <= 1.5 for r in students.values()),
        "distill: >= 0.5 points above labels alone (INT8 and FP32, every seed)": all(
            pts(dd["test_student_int8"], dd["test_labels_only_int8"]) >= 0.5
            and pts(dd["test_student_fp32"], dd["test_labels_only_fp32"]) >= 0.5 for dd in dist.values()),
        "distill: INT8 latency <= 0.5x the teacher's (every seed)": all(
            r["latency_ms_p50"] <= 0.5 * dense["latency_ms_p50"] for r in students.values()),
    })
    if full:
        checks.update({
            "low-rank: <= 0.5x params": lowr["params"] <= 0.5 * dense["params"],
            "low-rank: within 1 point": pts(dense["test_int8_accuracy"], lowr["test_int8_accuracy"]) <= 1.0,
            "low-rank: INT8 smaller": lowr["bytes"] < dense["bytes"],
            "low-rank: INT8 no slower": lowr["latency_ms_p50"] <= dense["latency_ms_p50"] * 1.05,
        })
    out["checks"] = checks
    pct = lambda v: "-" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    print(f"\n{name}: teacher FP32 accuracy {pct(t_fp32)} on the {len(xte):,} test images "
          f"({pct(fp32_acc)} on convert's validation sample)\n")
    print(f"| row | params | MACs | INT8 bytes | gzip | latency p50 ms | INT8 accuracy ({len(xte):,}) | "
          f"FP32 accuracy ({len(xte):,}) | INT8 / source FP32 (convert's sample) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, r in rows.items():
        print(f"| {k} | {r['params']:,} | {r['macs']:,} | {r['bytes']:,} | {r['gzip_bytes']:,} | "
              f"{r.get('latency_ms_p50', float('nan')):.3f} | {pct(r['test_int8_accuracy'])} | "
              f"{pct(r['test_fp32_accuracy'])} | {pct(r['int8_accuracy'])} / {pct(r['source_accuracy'])} |")
    print(f"\ndistillation: {d['train_count']:,} training images, {d['labelled_count']:,} labelled; T={d['temperature']}, "
          f"alpha={d['alpha']}, {d['epochs']} epochs (labels alone: {d['labels_only_epochs']} epochs over the labelled "
          f"images, the same optimizer steps); student init {d['student_init']}; MACs "
          f"{stu['macs'] / dense['macs']:.2f}x the teacher's")
    for seed, dd in dist.items():
        lat = students[seed]["latency_ms_p50"] / dense["latency_ms_p50"]
        print(f"  seed {seed}, {len(xte):,} test images: teacher INT8 {pct(dd['test_teacher_int8'])}; distilled student "
              f"INT8 {pct(dd['test_student_int8'])} ({pts(dd['test_student_int8'], dd['test_teacher_int8']):+.2f}), "
              f"FP32 {pct(dd['test_student_fp32'])}; same student on labels alone INT8 "
              f"{pct(dd['test_labels_only_int8'])}, FP32 {pct(dd['test_labels_only_fp32'])} (distillation "
              f"{pts(dd['test_student_int8'], dd['test_labels_only_int8']):+.2f} INT8, "
              f"{pts(dd['test_student_fp32'], dd['test_labels_only_fp32']):+.2f} FP32); latency {lat:.2f}x the teacher's")
        print(f"    convert's record ({'validation sample'}, FP32): teacher {pct(dd['teacher_accuracy'])}, distilled "
              f"{pct(dd['student_accuracy'])}, labels alone {pct(dd['labels_only_accuracy'])}")
    if full:
        print(f"low-rank ranks (rank/full): {out['low_rank_ranks']}; FP32 after fine-tuning "
              f"{pct(out['low_rank_fp32_accuracy'])} (convert's sample)")
    for k, v in out["checks"].items():
        print(f"  [{'x' if v else ' '}] {k}")
    out["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print(f"load average at the end: {out['load_average_end']} (1, 5, 15 min)")
    out["wall_s"] = round(time.perf_counter() - start)
    print(f"wall time {out['wall_s']} s" + (f" (--only {args.only})" if args.only else ""))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
