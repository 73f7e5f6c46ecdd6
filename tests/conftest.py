"""Shared by every test: session fixtures, builders, the open() audit and ``--shuffle-seed``.

Session fixtures (built once per run, used read-only):
    ``digits``      sklearn digits as (x float32 (N, 8, 8, 1) in [0, 1], y int64);
    ``digits_cnn``  one small Keras 3 CNN trained on ``digits[:1200]`` (10 epochs);
    ``digits16``, ``pruning_cnn_file``  digits at 16x16 and the CNN the pruning tests prune;
    ``demo_detector``  the repo's demo detector, trained and converted to INT8 once.
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

import numpy as np
import pytest

from _shared import build_external_data_model, import_blocker_source, load_digits_xy, make_canary

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGESHIP_PROGRESS", "0")

# ------------------------------------------------------------------------------ order


def pytest_addoption(parser):
    parser.addoption("--shuffle-seed", type=int, default=None,
                     help="shuffle test files and the tests within each file with this seed")


# Fixtures that convert or train a model, by (module, name): every test that uses one, directly or
# through another fixture, is marked ``slow`` here (``make test-fast`` leaves them out). Tests that
# convert in their own body carry ``@pytest.mark.slow`` (or a module ``pytestmark``) themselves.
SLOW_FIXTURES = {
    ("conftest", "digits_cnn"), ("conftest", "digits_cnn_file"), ("conftest", "pruning_cnn_file"),
    ("conftest", "demo_detector"),
    ("test_runtime", "fx"), ("test_compiled_model", "fx"), ("test_runtime_threads", "fx"),
    ("test_runtime_import", "files"), ("test_stream", "tiny_tflite"), ("test_stream", "heavy"),
    ("test_edgetpu", "small_model"), ("test_onnx_quant", "digits_model"), ("test_manifest_bundle", "model"),
    ("test_mixed_ranges", "detector_like"), ("test_prune_onnx", "digits_mlp"), ("test_determinism", "model_path"),
    ("test_delegate", "model"), ("test_devices", "float_model"), ("test_webview_browser", "live_stream"),
}


def _uses_slow_fixture(item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return False
    for name in item.fixturenames:
        for fd in info.name2fixturedefs.get(name, ()):
            module = getattr(getattr(fd, "func", None), "__module__", "") or ""
            if (module.rsplit(".", 1)[-1], name) in SLOW_FIXTURES:
                return True
    return False


# The long proofs on real third-party models and the compression training runs: their slow tests are
# the ``heavy`` suite (``make test-heavy``, run by CI after ``make test``), which keeps ``make test``
# well under 20 minutes on 2 cores. Their quick tests stay in ``make test``.
HEAVY_MODULES = {
    "test_detect_int8", "test_detect_nms", "test_real_segmentation", "test_maxdrop_map", "test_compress_distill",
    "test_compress_qat", "test_compress_lowrank", "test_onnx2tf_errors", "test_task_infer", "test_dynamic_runtime",
    "test_bench",
}


def _is_heavy(item) -> bool:
    return item.path.stem in HEAVY_MODULES and item.get_closest_marker("slow") is not None


_HARDENING_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hardening") + os.sep


def pytest_collection_modifyitems(config, items):
    for it in items:
        if it.get_closest_marker("slow") is None and _uses_slow_fixture(it):
            it.add_marker(pytest.mark.slow)
        if it.get_closest_marker("heavy") is None and _is_heavy(it):
            it.add_marker(pytest.mark.heavy)
        # everything under tests/hardening/ is the hardening suite (make harden), marked or not
        if it.get_closest_marker("hardening") is None and str(it.path).startswith(_HARDENING_DIR):
            it.add_marker(pytest.mark.hardening)
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


def _fixture_stats() -> dict:
    from _real_fixtures import cache_files  # noqa: PLC0415

    files = cache_files()
    if not files.is_dir():
        return {}
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(files.iterdir()) if p.is_file()}


def pytest_sessionstart(session):
    session.config._edgeship_fixture_stats = _fixture_stats()


def pytest_sessionfinish(session, exitstatus):
    """The real-model fixtures are read, never written: onnx2tf, for one, rewrites the file it is given."""
    before = getattr(session.config, "_edgeship_fixture_stats", {})
    after = _fixture_stats()
    changed = sorted(n for n in before if after.get(n) != before[n])
    if changed:
        session.config.get_terminal_writer().line(
            f"edgeship: the tests changed the real-model fixture(s) {', '.join(changed)} "
            "(something wrote to its input file); rerun `make fixtures` after fixing it", red=True)
        session.exitstatus = 1


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


@pytest.fixture(scope="session")
def digits16():
    """digits upsampled to 16x16, shuffled (seed 0): ``x``, ``y``, ``train``/``eval`` = first 1,400 / the rest."""
    tf = pytest.importorskip("tensorflow")
    x, y = load_digits_xy()
    x = tf.image.resize(x, (16, 16)).numpy()
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    x.setflags(write=False)
    y.setflags(write=False)
    return {"x": x, "y": y, "train": (x[:1400], y[:1400]), "eval": (x[1400:], y[1400:])}


@pytest.fixture(scope="session")
def pruning_cnn_file(digits16, tmp_path_factory):
    """The CNN the pruning tests prune: c1 conv 8 -> pool -> c2 conv 16 -> fc1 dense 32 -> logits 10,
    trained 12 epochs on ``digits16["train"]``, saved once as a Keras 3 ``.keras`` file (its path)."""
    keras = pytest.importorskip("keras")
    xtr, ytr = digits16["train"]
    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input((16, 16, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="c1"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(16, 3, activation="relu", name="c2"),
        keras.layers.Flatten(),
        keras.layers.Dense(32, activation="relu", name="fc1"),
        keras.layers.Dense(10, name="logits"),
    ])
    m.compile(keras.optimizers.Adam(2e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              metrics=["accuracy"])
    m.fit(xtr, ytr, epochs=12, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("pruning-cnn") / "digits16.keras"
    m.save(path)
    return str(path)


def detector_demo_module():
    """The repo's demo detector module (``edgeship.demos.detector``; earlier ``edgeship.converters.detector_demo``)."""
    import importlib  # noqa: PLC0415

    for name in ("edgeship.demos.detector", "edgeship.converters.detector_demo"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    pytest.skip("the demo detector module is not importable")


@pytest.fixture(scope="session")
def demo_detector(tmp_path_factory):
    """The demo detector trained and converted to INT8 once per session: (module, bundle path, info dict)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("cv2")
    import json  # noqa: PLC0415

    mod = detector_demo_module()
    work = tmp_path_factory.mktemp("detector")
    bundle = mod.build(str(work), log=lambda m: None)
    with open(os.path.join(str(work), "detector-int8.json"), encoding="utf-8") as fh:
        info = json.load(fh)
    return mod, bundle, info


@pytest.fixture()
def external_data_model():
    """The builder :func:`_shared.build_external_data_model`."""
    pytest.importorskip("onnx")
    return build_external_data_model


@pytest.fixture()
def import_blocker():
    """The builder :func:`_shared.import_blocker_source` (its source defines ``blocked_loaded()``)."""
    return import_blocker_source
