"""Pruning benchmark: dense vs pruned (50%, 75%, 2:4) INT8 TFLite, gzip bytes and accuracy.

Sparsity saves space only after compression, so what is compared is the gzip -9
size of each full-INT8 ``.tflite`` against the dense model's, measured side by
side in one run, with the accuracy of the FP32 and the INT8 models on the test
set. The model is a small Keras 3 CNN trained here, then pruned through the
Keras 3 -> tf_keras bridge with fine-tuning (``edgeship.converters.prune``).

Data: Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``) when installed, else scikit-learn's
digits upsampled to 28x28 (``--dataset digits``; what CI machines get). The
dataset used is printed. Default epochs: 4 dense + 3 fine-tuning on Fashion-MNIST;
10 + 10 on digits, whose 1,400 samples make 22 steps an epoch (with 3 fine-tuning
epochs, 66 steps, 75% lost 4.8 points there; with 10, 0.0).

    python benchmarks/bench_prune.py [--dataset auto|fashion|digits] [--epochs N]
        [--prune-epochs N] [--train-limit N] [--only 50%,75%] [--no-sparse-encoding]
        [--json out.json]

``bench_prune(**options) -> dict`` returns ``{"dataset", "dense", "rows", ...}``
with one row per configuration; ``rows(**options)`` returns only the rows;
``main(argv)`` prints a table (and writes JSON with ``--json``).

Targets (issue 4): 50% within 1 point of the dense FP32 accuracy and INT8 gzip
<= 0.72x dense INT8 gzip; 75% within 2 points and <= 0.48x. The accuracy checked
is the pruned INT8 artifact's (what ships); the FP32 pruned accuracy is shown too.
The reference dense model is the pruned-from model trained for as many extra
epochs as the fine-tuning, so that extra training is not counted as a pruning
gain. Rows "50%"/"75%" use ``prune_keras``'s default granularity: Dense kernels in
blocks of 4 consecutive input weights (contiguous in the TFLite file) and
convolutions elementwise; rows "elementwise" prune every layer elementwise (plain
tfmot); rows "+EXPERIMENTAL_SPARSITY" convert the same pruned model with TFLite's
sparse tensor encoding (size, and whether LiteRT runs it). A second table shows
the zeros of the largest int8 FullyConnected and Conv2D weights as serialized:
zero fraction and mean zero-run length, what gzip can exploit. The dataset used is
printed to stderr and in the table's first line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
TARGETS = {"50%": (1.0, 0.72), "75%": (2.0, 0.48)}  # (max drop in points, max gzip ratio), by sparsity
CONFIGS = (  # (label, sparsity, structure); structure None is prune_keras's default (Dense 1x4, conv elementwise)
    ("50%", 0.5, None), ("75%", 0.75, None), ("2:4", None, "2:4"),
    ("50% elementwise", 0.5, "elementwise"), ("75% elementwise", 0.75, "elementwise"),
)
# (dense epochs, fine-tuning epochs) by dataset: digits has 1,400 training samples (22 steps an
# epoch at batch 64), so it gets more epochs for a comparable number of fine-tuning steps.
EPOCHS = {"fashion-mnist": (4, 3), "digits-28x28": (10, 10)}
SPARSE_ENCODING_FOR = ("50%", "75%")  # also converted with tf.lite.Optimize.EXPERIMENTAL_SPARSITY


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)
    if magic == 2049:
        return np.frombuffer(data, np.uint8, offset=8).astype(np.int64)
    raise ValueError(f"{path}: not an IDX file (magic {magic})")


def load_dataset(name: str = "auto"):
    """(name, x_train, y_train, x_test, y_test) as float32 NHWC in [0, 1]."""
    have_fashion = os.path.isfile(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz"))
    if name == "fashion" or (name == "auto" and have_fashion):
        if not have_fashion:
            raise SystemExit("Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist")
        f = lambda n: _read_idx(os.path.join(FASHION_DIR, n))  # noqa: E731
        xtr = f("train-images-idx3-ubyte.gz").astype(np.float32)[..., None] / 255.0
        xte = f("t10k-images-idx3-ubyte.gz").astype(np.float32)[..., None] / 255.0
        return "fashion-mnist", xtr, f("train-labels-idx1-ubyte.gz"), xte, f("t10k-labels-idx1-ubyte.gz")
    from sklearn.datasets import load_digits  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    d = load_digits()
    x = tf.image.resize((d.images / 16.0).astype(np.float32)[..., None], (28, 28)).numpy()
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], d.target[idx].astype(np.int64)
    return "digits-28x28", x[:1400], y[:1400], x[1400:], y[1400:]


def build_cnn(keras, shape=(28, 28, 1), classes=10):
    return keras.Sequential([
        keras.Input(shape),
        keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool2"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(128, activation="relu", name="fc1"),
        keras.layers.Dense(classes, name="logits"),
    ], name="cnn")


def int8_tflite(model, calib: np.ndarray, count: int = 200, sparse_encoding: bool = False) -> bytes:
    """Full-integer INT8 TFLite (int8 input and output) calibrated on ``calib``; with
    ``sparse_encoding``, also ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (sparse tensors)."""
    import tensorflow as tf  # noqa: PLC0415

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT] + ([tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
                                                        if sparse_encoding else [])
    conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(min(count, len(calib))))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    return conv.convert()


def _interpreter(content: bytes, xnnpack: bool = True):
    try:
        from ai_edge_litert import interpreter as lite  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        import tensorflow as tf  # noqa: PLC0415

        lite = tf.lite
    resolver = getattr(lite, "OpResolverType", None) or getattr(getattr(lite, "experimental", None), "OpResolverType")
    kw = {} if xnnpack else {"experimental_op_resolver_type": resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    return lite.Interpreter(model_content=content, num_threads=2, **kw)


def tflite_accuracy(content: bytes, x: np.ndarray, y: np.ndarray, batch: int = 250, xnnpack: bool = True) -> float:
    it = _interpreter(content, xnnpack)
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], [batch, *x.shape[1:]])
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    s, z = inp["quantization"]
    correct = 0
    for i in range(0, len(x) - len(x) % batch, batch):
        xb = np.clip(np.round(x[i:i + batch] / s + z), -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], xb)
        it.invoke()
        correct += int(np.sum(np.argmax(it.get_tensor(out["index"]), -1) == y[i:i + batch]))
    tail = len(x) % batch
    if tail:  # the remainder, padded to the batch
        xb = np.zeros((batch, *x.shape[1:]), np.float32)
        xb[:tail] = x[len(x) - tail:]
        it.set_tensor(inp["index"], np.clip(np.round(xb / s + z), -128, 127).astype(np.int8))
        it.invoke()
        correct += int(np.sum(np.argmax(it.get_tensor(out["index"])[:tail], -1) == y[len(x) - tail:]))
    return correct / len(x)


def weight_layout(content: bytes) -> dict:
    """Zeros of the int8 weights as serialized: for the largest FullyConnected weight
    ((out, in)) and the largest Conv2D weight (OHWI), the zero fraction and the mean
    zero-run length in flatbuffer (C) order; ``sparse_tensors``: tensors stored in
    TFLite's sparse format (their FC/conv weights come out of a DENSIFY op and are
    not reported)."""
    it = _interpreter(content, xnnpack=False)  # the weights as stored, not XNNPack's repacked copy
    it.allocate_tensors()
    details = {d["index"]: d for d in it.get_tensor_details()}
    sparse = sum(1 for d in details.values() if d.get("sparsity_parameters"))
    try:
        ops = it._get_ops_details()  # noqa: SLF001
    except AttributeError:  # pragma: no cover
        return {"sparse_tensors": sparse}
    produced = {int(t) for op in ops for t in op["outputs"]}
    best: dict = {}
    for op in ops:
        kind = {"FULLY_CONNECTED": "fc", "CONV_2D": "conv"}.get(op["op_name"])
        if kind is None or len(op["inputs"]) < 2 or int(op["inputs"][1]) in produced:
            continue
        d = details.get(int(op["inputs"][1]))
        if d is None or d["dtype"] != np.int8:
            continue
        try:
            a = it.get_tensor(d["index"])
        except ValueError:
            continue
        if kind in best and best[kind]["size"] >= a.size:
            continue
        z = (a.reshape(-1) == 0).astype(np.int8)
        edges = np.diff(np.concatenate([[0], z, [0]]))
        runs = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)
        best[kind] = {"name": d["name"], "shape": [int(v) for v in a.shape], "size": int(a.size),
                      "zero_fraction": float(z.mean()), "mean_zero_run": float(runs.mean()) if len(runs) else 0.0}
    return {**best, "sparse_tensors": sparse}


def _gzip(b: bytes) -> int:
    return len(gzip.compress(b, compresslevel=9, mtime=0))


def _fp32_accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=500, verbose=0), -1) == y))


def bench_prune(*, dataset: str = "auto", epochs: int | None = None, prune_epochs: int | None = None, train_limit: int | None = None,
                seed: int = 0, progress: bool = False, configs=CONFIGS, sparse_encoding: bool = True) -> dict:
    """Train a dense CNN, prune it per configuration, convert each to INT8; measure."""
    import keras  # noqa: PLC0415

    from edgeship.converters.keras_bridge import bridge_to_tf_keras  # noqa: PLC0415
    from edgeship.converters.prune import prune_keras  # noqa: PLC0415

    name, xtr, ytr, xte, yte = load_dataset(dataset)
    d_epochs, d_prune = EPOCHS.get(name, (4, 3))
    epochs = d_epochs if epochs is None else int(epochs)
    prune_epochs = d_prune if prune_epochs is None else int(prune_epochs)
    print(f"bench_prune: dataset {name}" + ("" if name == "fashion-mnist" or dataset != "auto" else
          f" (Fashion-MNIST not found in {FASHION_DIR}, fell back to digits; "
          "apt-get install dataset-fashion-mnist)"),
          file=sys.stderr, flush=True)
    if train_limit:
        xtr, ytr = xtr[:train_limit], ytr[:train_limit]
    calib = xtr[np.random.default_rng(seed).permutation(len(xtr))[:200]]

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    dense = build_cnn(keras, xtr.shape[1:])
    dense.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    dense.fit(xtr, ytr, epochs=epochs, batch_size=64, verbose=0)
    train_s = time.perf_counter() - t0
    bridge = bridge_to_tf_keras(dense, samples=xte[:16])

    # The reference gets the same training budget as a pruned model (epochs + prune_epochs),
    # so that fine-tuning is not mistaken for a gain from pruning.
    t0 = time.perf_counter()
    ref = keras.models.clone_model(dense)
    ref.set_weights(dense.get_weights())
    ref.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ref.fit(xtr, ytr, epochs=prune_epochs, batch_size=64, verbose=0)
    ref_s = time.perf_counter() - t0

    def dense_row(label, model, secs):
        content = int8_tflite(bridge_to_tf_keras(model, samples=xte[:16]).model, calib)
        return {"config": label, "target": 0.0, "structure": None, "achieved_total": 0.0,
                "granularity": "dense", "layout": weight_layout(content),
                "fp32_accuracy": _fp32_accuracy(model, xte, yte), "int8_accuracy": tflite_accuracy(content, xte, yte),
                "int8_bytes": len(content), "int8_gzip_bytes": _gzip(content), "seconds": round(secs, 1),
                "target_drop_points": None, "target_gzip_ratio": None, "meets_target": None}

    rows = [dense_row(f"dense {epochs} ep (pruned from)", dense, train_s),
            dense_row(f"dense {epochs}+{prune_epochs} ep (reference)", ref, ref_s)]
    reference = rows[1]
    dense_fp32 = reference["fp32_accuracy"]
    for r in rows:
        r["gzip_ratio"] = r["int8_gzip_bytes"] / reference["int8_gzip_bytes"]
        r["drop_points_fp32"] = 100 * (dense_fp32 - r["fp32_accuracy"])
        r["drop_points_int8"] = 100 * (dense_fp32 - r["int8_accuracy"])
    for label, sparsity, structure in configs:
        t0 = time.perf_counter()
        res = prune_keras(dense, sparsity=sparsity, structure=structure, train_data=(xtr, ytr),
                          epochs=prune_epochs, batch_size=64, seed=seed, progress=progress)
        secs = time.perf_counter() - t0
        content = int8_tflite(res.model, calib)
        fp32 = _fp32_accuracy(res.model, xte, yte)
        int8 = tflite_accuracy(content, xte, yte)
        gz = _gzip(content)
        row = {
            "config": label, "target": res.target, "structure": res.structure, "granularity": res.granularity,
            "layout": weight_layout(content),
            "achieved_total": res.achieved_total, "fp32_accuracy": fp32, "int8_accuracy": int8,
            "int8_bytes": len(content), "int8_gzip_bytes": gz, "gzip_ratio": gz / reference["int8_gzip_bytes"],
            "drop_points_fp32": 100 * (dense_fp32 - fp32), "drop_points_int8": 100 * (dense_fp32 - int8),
            "seconds": round(secs, 1), "layers": res.layers, "skipped": res.skipped,
        }
        tgt = TARGETS.get(label.split()[0]) if sparsity is not None else None
        row["target_drop_points"], row["target_gzip_ratio"] = tgt if tgt else (None, None)
        row["meets_target"] = (row["drop_points_int8"] <= tgt[0] and row["gzip_ratio"] <= tgt[1]) if tgt else None
        rows.append(row)
        if sparse_encoding and label in SPARSE_ENCODING_FOR:
            rows.append(_sparse_row(row, res.model, calib, xte, yte, reference, dense_fp32))
    return {
        "dataset": name, "train_samples": int(len(xtr)), "test_samples": int(len(xte)),
        "epochs": epochs, "prune_epochs": prune_epochs, "bridge_max_abs_diff": bridge.max_abs_diff,
        "rows": rows,
    }


def _sparse_row(base: dict, model, calib, xte, yte, reference: dict, dense_fp32: float) -> dict:
    """The same pruned model converted with EXPERIMENTAL_SPARSITY: size, gzip, and whether
    LiteRT runs it (accuracy None and ``error`` set when it does not)."""
    row = {k: v for k, v in base.items() if k not in ("layers", "skipped", "layout")}
    row["config"] = base["config"] + " +EXPERIMENTAL_SPARSITY"
    row["target_drop_points"] = row["target_gzip_ratio"] = row["meets_target"] = None
    try:
        content = int8_tflite(model, calib, sparse_encoding=True)
    except Exception as exc:  # noqa: BLE001 - a measurement, reported as such
        row.update(int8_bytes=None, int8_gzip_bytes=None, gzip_ratio=None, int8_accuracy=None,
                   drop_points_int8=None, error=f"conversion: {type(exc).__name__}: {exc}"[:300])
        return row
    gz = _gzip(content)
    row.update(int8_bytes=len(content), int8_gzip_bytes=gz, gzip_ratio=gz / reference["int8_gzip_bytes"])
    try:
        row["layout"] = weight_layout(content)
        try:
            acc = tflite_accuracy(content, xte, yte)
            row["runs_on"] = "LiteRT (default delegates)"
        except RuntimeError as exc:  # XNNPack refuses sparse int8 FullyConnected: retry without it
            row["xnnpack_error"] = str(exc)[:200]
            acc = tflite_accuracy(content, xte, yte, xnnpack=False)
            row["runs_on"] = "LiteRT without XNNPack (XNNPack failed to prepare the sparse FullyConnected)"
        row.update(int8_accuracy=acc, drop_points_int8=100 * (dense_fp32 - acc))
    except Exception as exc:  # noqa: BLE001
        row.update(int8_accuracy=None, drop_points_int8=None, error=f"LiteRT: {type(exc).__name__}: {exc}"[:300])
    return row


def rows(**options) -> list[dict]:
    """Only the per-configuration rows of :func:`bench_prune` (for benchmarks/run.py)."""
    return bench_prune(**options)["rows"]


def format_table(result: dict) -> str:
    head = (f"pruning benchmark on {result['dataset']} ({result['train_samples']} train / {result['test_samples']} test, "
            f"dense {result['epochs']} epochs, fine-tune {result['prune_epochs']} epochs; "
            f"bridge max abs diff {result['bridge_max_abs_diff']:.2g})")
    head += "\ndrops and gzip ratios are against the reference dense model (same training budget)"
    lines = [head, "",
             "| config | sparsity | FP32 acc | INT8 acc | drop vs dense FP32 (INT8) | INT8 bytes | INT8 gzip | gzip ratio | target | met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if r.get("int8_gzip_bytes") is None or r.get("int8_accuracy") is None:
            lines.append(f"| {r['config']} | {r['achieved_total']:.3f} | {100 * r['fp32_accuracy']:.2f}% | - | - "
                         f"| {r.get('int8_bytes') or '-'} | {r.get('int8_gzip_bytes') or '-'} | "
                         f"{'-' if r.get('gzip_ratio') is None else format(r['gzip_ratio'], '.3f') + 'x'} | "
                         f"{r.get('error', '')} | |")
            continue
        tgt = "" if r["target_gzip_ratio"] is None else f"<= {r['target_drop_points']:g} pt, <= {r['target_gzip_ratio']:.2f}x"
        if "without XNNPack" in (r.get("runs_on") or ""):
            tgt = "XNNPack refused the sparse FC; ran on LiteRT's reference kernels"
        met = "" if r["meets_target"] is None else ("yes" if r["meets_target"] else "NO")
        lines.append(
            f"| {r['config']} | {r['achieved_total']:.3f} | {100 * r['fp32_accuracy']:.2f}% | {100 * r['int8_accuracy']:.2f}% "
            f"| {r['drop_points_int8']:+.2f} pt | {r['int8_bytes']} | {r['int8_gzip_bytes']} | {r['gzip_ratio']:.3f}x "
            f"| {tgt} | {met} |"
        )
    lay = [r for r in result["rows"] if r.get("layout")]
    if lay:
        lines += ["", "int8 weights as serialized (largest FullyConnected (out, in) and Conv2D OHWI tensor): "
                      "zero fraction / mean zero-run length in bytes",
                  "", "| config | granularity | FC zeros | FC mean run | conv zeros | conv mean run | sparse tensors |",
                  "|---|---|---|---|---|---|---|"]
        for r in lay:
            fc, cv = r["layout"].get("fc", {}), r["layout"].get("conv", {})
            g = r.get("granularity") or ""
            g = ("Dense 1x4 blocks, rest elementwise" if g.startswith("Dense kernels in aligned 1x4")
                 else g.split(" (")[0].split(" along")[0])
            lines.append(f"| {r['config']} | {g} | {fc.get('zero_fraction', 0):.3f} | {fc.get('mean_zero_run', 0):.2f} "
                         f"| {cv.get('zero_fraction', 0):.3f} | {cv.get('mean_zero_run', 0):.2f} "
                         f"| {r['layout'].get('sparse_tensors', 0)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=("auto", "fashion", "digits"), default="auto")
    p.add_argument("--epochs", type=int, default=None, help="dense training epochs (default: 4 fashion, 10 digits)")
    p.add_argument("--prune-epochs", type=int, default=None,
                   help="fine-tuning epochs per pruned model (default: 3 fashion, 10 digits)")
    p.add_argument("--train-limit", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default=None,
                   help="comma-separated config labels to run, e.g. '50%%,75%%' (default: all)")
    p.add_argument("--no-sparse-encoding", action="store_true",
                   help="skip the EXPERIMENTAL_SPARSITY conversions of the 50%%/75%% models")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    a = p.parse_args(argv)
    configs = CONFIGS
    if a.only:
        want = [w.strip() for w in a.only.split(",") if w.strip()]
        unknown = [w for w in want if w not in {c[0] for c in CONFIGS}]
        if unknown:
            p.error(f"--only: unknown config(s) {unknown}; choose from {[c[0] for c in CONFIGS]}")
        configs = tuple(c for c in CONFIGS if c[0] in want)
    res = bench_prune(dataset=a.dataset, epochs=a.epochs, prune_epochs=a.prune_epochs, train_limit=a.train_limit,
                      seed=a.seed, progress=sys.stderr.isatty(), sparse_encoding=not a.no_sparse_encoding,
                      configs=configs)
    print(format_table(res))
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2, default=float)
    return 0


if __name__ == "__main__":
    sys.exit(main())
