"""Shared by every test: session fixtures, builders, the open() audit and ``--shuffle-seed``.

Session fixtures (built once per run, used read-only):
    ``digits``      sklearn digits as (x float32 (N, 8, 8, 1) in [0, 1], y int64);
    ``digits_cnn``  one small Keras 3 CNN trained on ``digits[:1200]`` (10 epochs).
Builders (fixtures that return a function):
    ``external_data_model``  an ONNX Add(x, w) model whose ``w`` lives in external data;
    ``import_blocker``       Python source that makes imports of the named packages fail
                             (prepended to the code of a child process).
Confinement:
    ``canary``  a file outside every model folder; an in-process audit hook
                (:func:`sys.addaudithook`, event ``open``) records every ``open()`` of it,
                whatever the user (it holds as root, where file modes do not), and the
                test fails if anything opened it.
Order:
    ``--shuffle-seed N`` shuffles the order of the test files and of the tests inside each
    file (module fixtures stay built once per file); ``make test-order`` runs it with two
    seeds. Tests must not depend on the order they run in.
"""

from __future__ import annotations

import os
import random

import pytest

from _shared import build_external_data_model, import_blocker_source, load_digits_xy, make_canary

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGESHIP_PROGRESS", "0")

# ------------------------------------------------------------------------------ order


def pytest_addoption(parser):
    parser.addoption("--shuffle-seed", type=int, default=None,
                     help="shuffle test files and the tests within each file with this seed")


def pytest_collection_modifyitems(config, items):
    seed = config.getoption("--shuffle-seed")
    if seed is None:
        return
    rng = random.Random(seed)
    groups: dict = {}
    for it in items:
        groups.setdefault(it.nodeid.split("::")[0], []).append(it)
    files = list(groups)
    rng.shuffle(files)
    out = []
    for f in files:
        tests = groups[f]
        rng.shuffle(tests)
        out.extend(tests)
    items[:] = out


def pytest_report_header(config):
    seed = config.getoption("--shuffle-seed")
    return None if seed is None else f"edgeship: tests shuffled with --shuffle-seed {seed}"


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture()
def canary(tmp_path):
    """``tmp_path/secret.bin`` (outside any model folder under ``tmp_path/<dir>``), watched.

    The audit hook's own positive control runs first: a plain ``open()`` of the canary is seen.
    """
    c = make_canary(tmp_path / "secret.bin")
    with open(c.path, "rb"):
        pass
    assert c.opened == [str(c.path)], "the open() audit hook saw nothing"
    c.opened.clear()
    try:
        yield c
        assert c.opened == [], f"something opened the canary outside the model folder: {c.opened}"
    finally:
        c.unwatch()


@pytest.fixture(scope="session")
def digits():
    """sklearn digits: x float32 (1797, 8, 8, 1) in [0, 1] (read-only), y int64."""
    return load_digits_xy()


@pytest.fixture(scope="session")
def digits_cnn(digits):
    """Conv2D(8) -> Flatten -> Dense(10, softmax), trained 10 epochs on digits[:1200]; do not modify."""
    keras = pytest.importorskip("keras")
    x, y = digits
    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    m.fit(x[:1200], y[:1200], epochs=10, batch_size=64, verbose=0)
    return m


@pytest.fixture(scope="session")
def digits_cnn_file(digits_cnn, tmp_path_factory):
    """``digits_cnn`` saved once as a Keras 3 ``.keras`` file (its path, str)."""
    path = tmp_path_factory.mktemp("digits-cnn") / "digits.keras"
    digits_cnn.save(path)
    return str(path)


@pytest.fixture()
def external_data_model():
    """The builder :func:`_shared.build_external_data_model`."""
    pytest.importorskip("onnx")
    return build_external_data_model


@pytest.fixture()
def import_blocker():
    """The builder :func:`_shared.import_blocker_source` (its source defines ``blocked_loaded()``)."""
    return import_blocker_source
