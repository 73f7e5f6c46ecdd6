"""Helpers shared by the ``test_cli_claims*.py`` files (no tests here).

The README's claims are checked through the interface the README shows: the
CLI, called in-process as ``edgeship.cli.main([...])`` (its exit codes, its
stderr/stdout) so that TensorFlow is imported once per test session, not once
per command. A tiny digits CNN (8x8 inputs, two layers) keeps every conversion
to a few seconds on a shared 2-core machine.
"""

from __future__ import annotations

import json
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGESHIP_PROGRESS", "0")


def cli(*args):
    """``edgeship ARGS`` in this process: the exit code (argparse's SystemExit included)."""
    from edgeship.cli import main

    try:
        return int(main([str(a) for a in args]))
    except SystemExit as exc:  # argparse: a usage error exits 2, --help exits 0
        return int(exc.code or 0)


def cli_capture(capfd, *args):
    """``(exit code, stdout, stderr)`` of ``edgeship ARGS`` in this process (file descriptors captured)."""
    capfd.readouterr()
    rc = cli(*args)
    out, err = capfd.readouterr()
    return rc, out, err


def cli_json(capfd, *args):
    """The one JSON object ``edgeship ARGS --json`` prints (asserting exit 0 and nothing else on stdout)."""
    rc, out, err = cli_capture(capfd, *args, "--json")
    assert rc == 0, err[-3000:]
    return json.loads(out)


def one_error_line(err: str) -> str:
    """The CLI's single ``edgeship: error: ...`` line (asserting there is exactly one and no traceback)."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("edgeship: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def digits_xy(size: int = 8):
    """scikit-learn's bundled digits as float32 NHWC in [0, 1] (``size`` 8 or 16), and the labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)
    if size != 8:
        k = size // 8
        x = np.kron(x, np.ones((1, k, k), np.float32))
    return x[..., None], d.target.astype(np.int64)


def train_cnn(x, y, *, epochs: int = 3, layers=None):
    """A small Keras 3 CNN trained to ~80-95% on digits in a few seconds (seeded)."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input(x.shape[1:]),
        *(layers or []),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:1400], y[:1400], epochs=epochs, batch_size=64, verbose=0)
    return model


def write_data(root, x, y) -> dict:
    """Calibration, held-out (with and without labels) and batch files; their paths by name."""
    paths = {
        "calib": os.path.join(root, "calib.npz"),
        "test": os.path.join(root, "test.npz"),
        "test_x": os.path.join(root, "test_x.npy"),
        "batch": os.path.join(root, "batch.npy"),
    }
    np.savez(paths["calib"], x=x[:300], y=y[:300])
    np.savez(paths["test"], x=x[1400:], y=y[1400:])
    np.save(paths["test_x"], x[1400:])
    np.save(paths["batch"], x[1400:1404])
    return paths


def manifest(bundle) -> dict:
    with open(os.path.join(bundle, "manifest.json"), encoding="utf-8") as fh:
        return json.load(fh)


def artifact(man: dict, *, fmt: str | None = None, file: str | None = None) -> dict:
    arts = [a for a in man["artifacts"] if (fmt is None or a["format"] == fmt) and (file is None or a["file"] == file)]
    assert len(arts) == 1, [a["file"] for a in man["artifacts"]]
    return arts[0]


def tflite_tensors(path: str) -> dict:
    """name -> numpy array of every constant tensor of a ``.tflite`` file (read with LiteRT)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=path, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    out = {}
    for d in it.get_tensor_details():
        try:
            out[d["name"]] = it.get_tensor(d["index"])
        except ValueError:
            pass
    return out
