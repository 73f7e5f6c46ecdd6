"""Quantization-aware training (``--qat``, and as the ``--max-drop`` fallback after post-training INT8)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow_model_optimization")

from edgeship.converters import convert  # noqa: E402
from edgeship.converters.compress import CompressOptions  # noqa: E402
from edgeship.errors import ValidationFailedError  # noqa: E402


@pytest.fixture(scope="module")
def digits_split(digits):
    x, y = digits
    idx = np.random.default_rng(0).permutation(len(x))
    x, y = x[idx], y[idx]
    return (x[:1300], y[:1300]), (x[1300:], y[1300:])


def _mlp(digits_split, scale: float):
    """A digits MLP; hidden unit 0 scaled ``scale`` times (and the next layer divided: the same function),
    so its activation range swamps the others under per-tensor INT8."""
    keras = pytest.importorskip("keras")
    (xtr, ytr), _ = digits_split
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                          keras.layers.Dense(64, activation="relu", name="h"), keras.layers.Dense(10, name="o")])
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(xtr, ytr, epochs=15, verbose=0)
    h, o = m.get_layer("h"), m.get_layer("o")
    k, b = h.get_weights()
    k[:, 0] *= scale
    b[0] *= scale
    h.set_weights([k, b])
    k2, b2 = o.get_weights()
    k2[0, :] /= scale
    o.set_weights([k2, b2])
    return m


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_cross_layer_equalization_keeps_the_function_and_removes_the_outlier(flavor):
    km = pytest.importorskip(flavor)
    from edgeship.converters.compress.equalize import equalizable_pairs, equalize_pairs

    i = km.Input((8, 8, 1))
    h = km.layers.Conv2D(8, 3, activation="relu", name="c1")(i)
    h = km.layers.MaxPooling2D(name="p")(h)
    h = km.layers.Flatten(name="f")(h)
    h = km.layers.Dense(16, activation="relu", name="d1")(h)
    model = km.Model(i, km.layers.Dense(4, name="o")(h))
    d1, o = model.get_layer("d1"), model.get_layer("o")
    k, b = d1.get_weights()
    k[:, 0] *= 300.0
    b[0] *= 300.0
    d1.set_weights([k, b])
    k2, b2 = o.get_weights()
    k2[0] /= 300.0
    o.set_weights([k2, b2])
    x = np.random.default_rng(0).uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    ref = np.asarray(model(x))
    assert [(a.name, b.name, f) for a, b, f in equalizable_pairs(model)] == [("c1", "d1", 8), ("d1", "o", None)]
    rows = {(r["a"], r["b"]): r for r in equalize_pairs(model)}
    np.testing.assert_allclose(np.asarray(model(x)), ref, rtol=1e-4, atol=1e-5)  # the same function
    assert rows[("d1", "o")]["max_scale"] > 50  # the outlier unit was scaled back
    col = np.max(np.abs(model.get_layer("d1").get_weights()[0]), axis=0)
    assert col[0] < 5 * np.median(col[1:])


@pytest.mark.slow
def test_qat_recovers_a_model_post_training_int8_collapses(digits_split, tmp_path):
    (xtr, ytr), (xev, yev) = digits_split
    model = _mlp(digits_split, 1000.0)
    with pytest.raises(ValidationFailedError, match="collapsed"):  # post-training INT8: one output for every sample
        convert(model, tmp_path / "ptq", calib=xtr[:200], eval_data=(xev, yev))
    res = convert(model, tmp_path / "b", calib=xtr[:200], eval_data=(xev, yev),
                  train_data=(xtr, ytr), compress=CompressOptions(qat=True, qat_epochs=1, qat_lr=1e-4))
    q = res.manifest["compression"]["qat"]
    assert q["bridged"] is True and q["epochs"] == 1 and q["reason"] == "asked for (qat)" and len(q["history"]) == 1
    assert q["schedule"] == "cosine" and "cross-layer equalization" in q["method"]
    assert [(p["a"], p["b"]) for p in q["equalized_pairs"]] == [("h", "o")]
    rows = {r["stage"]: r for r in res.manifest["compression"]["stages"]}
    assert set(rows) == {"source", "qat", "export model.int8.tflite"}
    v = res.manifest["validation"]["artifacts"]["model.int8.tflite"]
    assert v["accuracy"] >= v["source_accuracy"] - 0.01 and v["top1_agreement"] >= 0.95
    assert "Quantization-aware training" in (tmp_path / "b" / "report.md").read_text()


@pytest.mark.slow
def test_max_drop_missed_by_ptq_is_retried_with_qat_and_the_failure_names_both(digits_split, tmp_path):
    (xtr, ytr), (xev, yev) = digits_split
    # an input feature 1000x larger than the others (the first layer divided by as much: the same function):
    # the INT8 input scale swamps every other pixel, which neither equalization nor QAT can change
    model = _mlp(digits_split, 1.0)
    h = model.get_layer("h")
    k, b = h.get_weights()
    k[27] /= 1000.0
    h.set_weights([k, b])
    xtr, xev = xtr.copy(), xev.copy()
    xtr[:, 3, 3] *= 1000.0
    xev[:, 3, 3] *= 1000.0
    with pytest.raises(ValidationFailedError, match=r"post-training INT8 missed max_drop=1.*quantization-aware "
                                                    r"training \(1 epochs\) did not meet it either"):
        convert(model, tmp_path / "b", calib=xtr[:200], eval_data=(xev, yev), max_drop=1, train_data=(xtr, ytr),
                compress=CompressOptions(qat_epochs=1))
    assert not (tmp_path / "b").exists()
    with pytest.raises(ValidationFailedError) as plain:  # without training data: no retry, the PTQ message alone
        convert(model, tmp_path / "c", calib=xtr[:200], eval_data=(xev, yev), max_drop=1)
    assert "quantization-aware" not in str(plain.value)


@pytest.mark.slow
def test_max_drop_met_by_qat_after_ptq_missed_it_is_said_in_the_report(digits_split, tmp_path):
    """The digits MLP with unit 0 scaled 1000x: post-training INT8 collapses, so --max-drop 2 is missed
    by PTQ and met by the automatic QAT retry (one epoch)."""
    (xtr, ytr), (xev, yev) = digits_split
    res = convert(_mlp(digits_split, 1000.0), tmp_path / "b", calib=xtr[:200], eval_data=(xev, yev), max_drop=2,
                  train_data=(xtr, ytr), compress=CompressOptions(qat_epochs=1, qat_lr=1e-4))
    q = res.manifest["compression"]["qat"]
    assert q["reason"] == "post-training INT8 missed max_drop=2" and "collapsed" in q["ptq_error"]
    assert any("retried with quantization-aware training" in w for w in res.warnings)
    v = res.manifest["validation"]["artifacts"]["model.int8.tflite"]
    assert 100 * (v["source_accuracy"] - v["accuracy"]) <= 2
    assert "why: post-training INT8 missed max_drop=2" in (tmp_path / "b" / "report.md").read_text()


@pytest.mark.slow
def test_all_stages_compose_in_the_documented_order(pruning_cnn_file, digits16, tmp_path):
    xtr, ytr = digits16["train"]
    xev, yev = digits16["eval"]
    res = convert(pruning_cnn_file, tmp_path / "b", calib=xtr[:100], eval_data=(xev, yev), train_data=(xtr, ytr),
                  prune=0.5, prune_epochs=1,
                  compress=CompressOptions(distill=True, student_width=0.75, distill_epochs=2, low_rank=16,
                                           low_rank_epochs=1, qat=True, qat_epochs=1))
    comp = res.manifest["compression"]
    assert [r["stage"] for r in comp["stages"]] == ["source", "distill", "low_rank", "qat", "export model.int8.tflite"]
    assert "prune-preserving" in comp["qat"]["method"] and "Dense weights left to the converter" in comp["qat"]["method"]
    pruned = {r["name"]: r["achieved"] for r in res.manifest["pruning"]["layers"]}
    assert any(name.endswith("_lr") for name in pruned)  # pruning ran on the factorized student
    macs = [r["macs"] for r in comp["stages"][:4]]
    assert macs[1] < macs[0] and macs[2] < macs[1] and macs[3] == macs[2]
    v = res.manifest["validation"]["artifacts"]["model.int8.tflite"]
    # four stages deep on 2-epoch budgets, still a classifier (chance: 0.1; measured 0.54)
    assert v["accuracy"] > 0.4 and v["top1_agreement"] > 0.4
