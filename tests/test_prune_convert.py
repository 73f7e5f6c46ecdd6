"""convert() with pruning: a Keras 3 digits CNN pruned through the tf_keras bridge with
fine-tuning, and an ONNX CNN pruned on its initializers; option checks.

The CNN is trained here on scikit-learn's digits (8x8 upsampled to 16x16); pruning
fine-tunes for 2 epochs on 1,400 samples (a few seconds on 2 CPU cores).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGESHIP_PROGRESS", "0")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("tf_keras")
pytest.importorskip("tensorflow_model_optimization")
pytest.importorskip("sklearn")

import edgeship.runtime as rt  # noqa: E402
from edgeship.converters import convert  # noqa: E402
from edgeship.errors import InputError  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(digits16, tmp_path_factory):
    x, y = digits16["x"], digits16["y"]
    folder = tmp_path_factory.mktemp("digits")
    train = folder / "train.npz"
    np.savez(train, x=x[:1400], y=y[:1400])
    return {"x": x, "y": y, "train": str(train), "calib": x[:200], "eval": digits16["eval"]}


@pytest.fixture(scope="module")
def keras3_path(pruning_cnn_file):
    """The session's pruning CNN (tests/conftest.py) saved as .keras (what users have)."""
    return pruning_cnn_file


@pytest.fixture(scope="module")
def dense_bundle(digits, keras3_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("dense") / "b"
    return convert(keras3_path, out, calib=digits["calib"], eval_data=digits["eval"], calib_count=200)


@pytest.fixture(scope="module")
def pruned_bundle(digits, keras3_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "b"
    return convert(keras3_path, out, calib=digits["calib"], eval_data=digits["eval"], calib_count=200,
                   prune=0.5, train_data=digits["train"], prune_epochs=2)


def test_pruned_manifest_records_sparsity_per_layer(pruned_bundle):
    p = pruned_bundle.manifest["pruning"]
    assert p["target"] == 0.5 and p["structure"] is None
    assert p["fine_tuned"] is True and p["epochs"] == 2 and p["train_count"] == 1400
    assert p["bridged"] is True and p["bridge"]["max_abs_diff"] <= 1e-5  # Keras 3 -> tf_keras, proven
    assert [lyr["name"] for lyr in p["layers"]] == ["c1", "c2", "fc1", "logits"]
    for lyr in p["layers"]:
        assert set(lyr) >= {"name", "target", "achieved", "params"}
        assert abs(lyr["achieved"] - 0.5) <= 0.02, lyr
    assert abs(p["achieved_total"] - 0.5) <= 0.02
    # the default granularity is recorded: Dense kernels in 1x4 blocks, convolutions elementwise
    assert {lyr["name"]: lyr["structure"] for lyr in p["layers"]} == {
        "c1": "elementwise", "c2": "elementwise", "fc1": "1x4", "logits": "1x4"}
    assert p["granularity"].startswith("Dense kernels in aligned 1x4 blocks")
    # the manifest on disk is what convert() returned, and the settings say what was asked
    on_disk = json.load(open(os.path.join(pruned_bundle.bundle, "manifest.json"), encoding="utf-8"))
    assert on_disk["pruning"]["layers"] == p["layers"]
    s = on_disk["settings"]
    assert s["prune"] == 0.5 and s["prune_epochs"] == 2 and s["prune_structure"] is None


# INT8 gzip bytes, pruned / dense. README (benchmarks/bench_prune.py): 0.630x at 50% and 0.372x at
# 75% (0.635x / 0.372x on digits at 28x28 with 10 fine-tuning epochs). This test's model (16x16,
# 2 fine-tuning epochs) measured GZIP_MEASURED; the bounds add a margin for noise to README's figures.
GZIP_MEASURED = {0.5: 0.667, 0.75: 0.432}
GZIP_BOUND = {0.5: 0.63 + 0.07, 0.75: 0.37 + 0.10}


def _gzip_ratio(pruned, dense):
    return pruned.manifest["artifacts"][0]["gzip_bytes"] / dense.manifest["artifacts"][0]["gzip_bytes"]


def test_pruned_int8_gzips_smaller_and_stays_accurate(pruned_bundle, dense_bundle, digits):
    dense = dense_bundle.manifest["artifacts"][0]
    pruned = pruned_bundle.manifest["artifacts"][0]
    assert pruned["precision"] == dense["precision"] == "int8"
    ratio = _gzip_ratio(pruned_bundle, dense_bundle)
    assert ratio <= GZIP_BOUND[0.5], (ratio, pruned["gzip_bytes"], dense["gzip_bytes"])
    dv = dense_bundle.manifest["validation"]["artifacts"][dense["file"]]
    pv = pruned_bundle.manifest["validation"]["artifacts"][pruned["file"]]
    # validation compares with the ORIGINAL dense model: same reference accuracy in both bundles
    assert pv["source_accuracy"] == pytest.approx(dv["source_accuracy"])
    assert pv["accuracy"] >= pv["source_accuracy"] - 0.03  # pruning + INT8 together, 2 fine-tuning epochs
    # the FP32 cost of pruning alone, measured on every validation sample against the dense source
    cost = pruned_bundle.manifest["pruning"]["fp32_cost"]
    assert cost["count"] == len(digits["eval"][1]), cost
    assert cost["source_accuracy"] == pytest.approx(pv["source_accuracy"]), cost
    assert cost["drop_points"] == pytest.approx(100 * (cost["source_accuracy"] - cost["accuracy"]), abs=0.01), cost


def test_pruned_75_percent(digits, keras3_path, dense_bundle, tmp_path):
    r = convert(keras3_path, tmp_path / "b75", calib=digits["calib"], eval_data=digits["eval"], calib_count=200,
                prune=0.75, train_data=digits["train"], prune_epochs=2)
    p = r.manifest["pruning"]
    assert p["target"] == 0.75 and abs(p["achieved_total"] - 0.75) <= 0.02
    assert all(abs(lyr["achieved"] - 0.75) <= 0.02 for lyr in p["layers"]), p["layers"]
    ratio = _gzip_ratio(r, dense_bundle)
    assert ratio <= GZIP_BOUND[0.75], ratio
    v = r.manifest["validation"]["artifacts"][r.manifest["artifacts"][0]["file"]]
    # 75% with 2 fine-tuning epochs costs accuracy (measured: -11.8 points); not more than 15
    assert v["accuracy"] >= v["source_accuracy"] - 0.15, v


def test_pruned_bundle_runs_and_reports(pruned_bundle, digits):
    with rt.load(pruned_bundle.bundle) as m:
        out = next(iter(m.run(digits["x"][1500:1520]).values()))
    assert np.mean(np.argmax(out, 1) == digits["y"][1500:1520]) >= 0.8
    md = open(os.path.join(pruned_bundle.bundle, "report.md"), encoding="utf-8").read()
    assert "## Pruning" in md and "| fc1 | 50.0% | 50.0% |" in md and "bridged to tf_keras" in md
    html = open(os.path.join(pruned_bundle.bundle, "report.html"), encoding="utf-8").read()
    assert "Sparsity per layer" in html


def test_two_four_structure_without_training_data(digits, keras3_path, tmp_path):
    r = convert(keras3_path, tmp_path / "b", calib=digits["calib"], eval_data=digits["eval"], calib_count=100,
                prune_structure="2:4")
    p = r.manifest["pruning"]
    assert p["structure"] == "2:4" and p["fine_tuned"] is False and p["epochs"] == 0
    assert {s["name"] for s in p["skipped"]} == {"c1"}  # one input channel: not a multiple of 4
    assert all(abs(lyr["achieved"] - 0.5) < 1e-6 for lyr in p["layers"])
    assert any("no training data" in w for w in r.warnings)


def test_prune_options_are_checked_before_any_work(keras3_path, tmp_path):
    for kw, needle in (
        (dict(prune=1.2), "prune=1.2"),
        (dict(prune=0.0), "prune=0.0"),
        (dict(prune=True), "prune=True"),
        (dict(train_data="x.npz"), "train_data"),
        (dict(prune=0.5, prune_epochs=0), "prune_epochs"),
        (dict(auto_fallback=True), "max_drop"),
    ):
        with pytest.raises(InputError, match=needle):
            convert(keras3_path, tmp_path / "never", calib="random", **kw)
    with pytest.raises(ValueError, match="2:4|N:M"):
        convert(keras3_path, tmp_path / "never", calib="random", prune_structure="4:2")
    assert not (tmp_path / "never").exists()


def test_onnx_source_pruned_on_initializers_with_measured_cost(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from test_onnx_common import digits_conv_net

    calib, xe, ye = digits_conv_net(tmp_path / "cnn.onnx")
    r = convert(str(tmp_path / "cnn.onnx"), tmp_path / "b", calib=calib, eval_data=(xe, ye), formats=("onnx",),
                prune=0.5)
    p = r.manifest["pruning"]
    assert p["fine_tuned"] is False and p["target"] == 0.5
    assert all(abs(lyr["achieved"] - 0.5) < 0.01 for lyr in p["layers"])
    cost = p["accuracy_cost"]  # measured on the validation data, without fine-tuning
    assert cost["count"] == len(xe) and cost["accuracy"] is not None and "drop_points" in cost
    v = r.manifest["validation"]["artifacts"]["model.int8.onnx"]
    assert v["source_accuracy"] == pytest.approx(cost["source_accuracy"])  # reference: the dense source
    # the pruned initializers reach the INT8 artifact: a max_drop below the pruning cost is reported
    if cost["drop_points"] > 0.5:
        with pytest.raises(Exception, match="max_drop"):
            convert(str(tmp_path / "cnn.onnx"), tmp_path / "c", calib=calib, eval_data=(xe, ye), formats=("onnx",),
                    prune=0.5, max_drop=cost["drop_points"] / 4)
