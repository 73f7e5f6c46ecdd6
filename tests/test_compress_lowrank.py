"""Low-rank factorization (``--low-rank``): Keras 3 / tf_keras by SVD, ONNX Gemm/MatMul initializers, in convert()."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from edgeship.converters import convert  # noqa: E402
from edgeship.converters.compress import CompressOptions, count_macs  # noqa: E402
from edgeship.converters.compress.lowrank import choose_rank, factorize_keras  # noqa: E402
from edgeship.errors import InputError, UnsupportedModelError  # noqa: E402


def _low_rank_kernels(model, rank: int, seed: int = 0) -> None:
    """Give every Dense/Conv2D kernel an exact rank ``rank`` (biases kept)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ in ("Dense", "Conv2D"):
            w = np.asarray(layer.kernel)
            m, n = int(np.prod(w.shape[:-1])), w.shape[-1]
            k = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n)) * (0.5 / np.sqrt(m * rank))
            layer.set_weights([k.reshape(w.shape).astype(np.float32), *layer.get_weights()[1:]])


def _models(km):
    i = km.Input((8, 8, 1))
    x = km.layers.Conv2D(32, 3, activation="relu", name="c1")(i)
    x = km.layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    x = km.layers.Flatten()(x)
    x = km.layers.Dense(64, activation="relu", name="fc")(x)
    functional = km.Model(i, km.layers.Dense(10, name="logits")(x))
    sequential = km.Sequential([km.Input((8, 8, 1)), km.layers.Conv2D(32, 3, name="c1"),
                                km.layers.Conv2D(64, 3, activation="relu", name="c2"), km.layers.Flatten(),
                                km.layers.Dense(64, name="fc"), km.layers.Dense(10, name="logits")])
    return functional, sequential


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_exact_low_rank_kernels_are_factorized_without_changing_outputs(flavor):
    km = pytest.importorskip(flavor)
    x = np.random.default_rng(1).uniform(0, 1, (16, 8, 8, 1)).astype(np.float32)
    for model in _models(km):
        _low_rank_kernels(model, 6)
        res = factorize_keras(model, rank=6)
        assert {r["name"]: r["rank"] for r in res.layers} == {"c2": 6, "fc": 6}  # c1: < 1024 weights; logits: output
        assert {s["name"] for s in res.skipped} == {"c1", "logits"}
        np.testing.assert_allclose(np.asarray(res.model(x)), np.asarray(model(x)), atol=2e-5)
        names = [layer.name for layer in res.model.layers]
        assert names.index("c2_lr") + 1 == names.index("c2") and "fc_lr" in names
        assert res.params_after < res.params_before and res.macs_after < res.macs_before
        assert res.macs_after == count_macs(res.model)
        assert type(res.model).__module__.split(".")[0] == type(model).__module__.split(".")[0]


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_auto_factorizes_only_where_it_cuts_the_layers_macs_enough(flavor):
    km = pytest.importorskip(flavor)
    from edgeship.converters.compress.lowrank import AUTO_MIN_SAVED_MACS_PER_POSITION

    for model in _models(km):
        _low_rank_kernels(model, 6)
        res = factorize_keras(model, rank="auto", energy=0.99999)
        assert [r["name"] for r in res.layers] == ["fc"]  # 6 x (1024 + 64) of 1024 x 64 MACs
        why = {s["name"]: s["reason"] for s in res.skipped}
        # c2 at rank 6 has fewer MACs, but saves less than one extra op costs at this size
        assert f"auto needs {AUTO_MIN_SAVED_MACS_PER_POSITION:,} per op" in why["c2"]
        assert res.layers[0]["macs_after"] <= 0.5 * res.layers[0]["macs_before"]
    dense = km.Sequential([km.Input((8,)), km.layers.Dense(256, activation="relu", name="d"),
                           km.layers.Dense(10, name="o")])
    _low_rank_kernels(dense, 6)
    with pytest.raises(UnsupportedModelError, match=r"d: svd rank 6 keeps 0.77x of the layer's 2,048 MACs"):
        factorize_keras(dense, rank="auto", energy=0.99999)  # 6 x (8 + 256) MACs is not half of 8 x 256


def _tucker_model(km, r_in: int, r_out: int, seed: int = 0):
    """A 3x3 128 -> 128 convolution at 8x8 whose kernel has channel ranks (r_in, r_out)."""
    model = km.Sequential([km.Input((8, 8, 128)), km.layers.Conv2D(128, 3, padding="same", activation="relu", name="c"),
                           km.layers.GlobalAveragePooling2D(name="gap"), km.layers.Dense(10, name="o")])
    rng = np.random.default_rng(seed)
    core = rng.normal(size=(3, 3, r_in, r_out))
    w = np.einsum("hwab,ia,ob->hwio", core, rng.normal(size=(128, r_in)), rng.normal(size=(128, r_out))) * 0.01
    c = model.get_layer("c")
    c.set_weights([w.astype(np.float32), c.get_weights()[1]])
    return model


@pytest.mark.parametrize("flavor", ["keras", "tf_keras"])
def test_tucker2_keeps_outputs_at_full_rank_and_auto_picks_it_where_it_cuts_macs(flavor):
    km = pytest.importorskip(flavor)
    x = np.random.default_rng(1).uniform(0, 1, (2, 8, 8, 128)).astype(np.float32)
    model = _tucker_model(km, 128, 128)
    full = factorize_keras(model, rank=128, conv_method="tucker2")  # full rank: the same function
    assert [(r["name"], r["method"], r["rank"]) for r in full.layers] == [("c", "tucker2", [128, 128])]
    assert [layer.name for layer in full.model.layers] == ["c_lr_in", "c_lr", "c", "gap", "o"]
    np.testing.assert_allclose(np.asarray(full.model(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-5)
    low = factorize_keras(model, rank=32, conv_method="tucker2")
    assert low.macs_after < 0.3 * low.macs_before and low.params_after < low.params_before
    # a kernel of channel ranks (4, 4): auto picks Tucker-2 (1x1 to 4, 3x3 4 -> 4, 1x1 to 128) over SVD, exactly
    model = _tucker_model(km, 4, 4)
    res = factorize_keras(model, rank="auto", energy=0.99999)
    row = res.layers[0]
    assert (row["method"], row["rank"]) == ("tucker2", [4, 4]) and row["macs_after"] < 0.05 * row["macs_before"]
    np.testing.assert_allclose(np.asarray(res.model(x)), np.asarray(model(x)), rtol=1e-3, atol=1e-4)
    svd = factorize_keras(model, rank="auto", energy=0.99999, conv_method="svd").layers[0]
    assert svd["method"] == "svd" and svd["macs_after"] > row["macs_after"]


def test_rank_choice_by_energy_and_by_cap():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # energies 16, 4, 1, 1 of 22
    assert choose_rank(s, "auto", 0.7) == 1 and choose_rank(s, "auto", 0.9) == 2
    assert choose_rank(s, "auto", 0.99) == 4 and choose_rank(s, 3, 0.9) == 3 and choose_rank(s, 9, 0.9) == 4


def test_a_rank_that_saves_nothing_is_refused_naming_the_layers():
    km = pytest.importorskip("keras")
    model = _models(km)[1]
    with pytest.raises(UnsupportedModelError, match=r"fc: rank 64 saves nothing"):
        factorize_keras(model, rank=500)


def test_options_are_refused_before_the_model_is_loaded(tmp_path):
    for opts, match in [(CompressOptions(low_rank=0), "low_rank"), (CompressOptions(low_rank="half"), "low_rank"),
                        (CompressOptions(low_rank="auto", low_rank_energy=1.5), "low_rank_energy"),
                        (CompressOptions(distill=True), "train_data"), (CompressOptions(qat=True), "train_data"),
                        (CompressOptions(student_width=0.5), "distill=True"),
                        (CompressOptions(distill=True, student_width=2.0, train_data=(np.zeros((2, 2)), [0, 1])),
                         "student_width")]:
        with pytest.raises(InputError, match=match):
            convert(object(), tmp_path / "b", compress=opts)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_convert_low_rank_fine_tunes_and_records_each_stage(pruning_cnn_file, digits16, tmp_path):
    xtr, ytr = digits16["train"]
    xev, yev = digits16["eval"]
    with pytest.raises(UnsupportedModelError, match=r"fc1: svd rank \d+ keeps 0.\d+x of the layer's 12,800 MACs"):
        # auto: this CNN's layers are too small for an extra op to pay (fc1 is 400 x 32)
        convert(pruning_cnn_file, tmp_path / "a", calib=xtr[:200], eval_data=(xev, yev),
                compress=CompressOptions(low_rank="auto"), train_data=(xtr, ytr))
    res = convert(pruning_cnn_file, tmp_path / "b", calib=xtr[:200], eval_data=(xev, yev),
                  compress=CompressOptions(low_rank=8, low_rank_epochs=2), train_data=(xtr, ytr))
    comp = res.manifest["compression"]
    assert comp["order"] == ["distill", "low_rank", "prune", "qat"]
    rows = {r["stage"]: r for r in comp["stages"]}
    assert rows["low_rank"]["params"] < rows["source"]["params"] and rows["low_rank"]["macs"] < rows["source"]["macs"]
    assert "fc1" in {r["name"] for r in comp["low_rank"]["layers"]} and comp["low_rank"]["fine_tuned"] is True
    assert len(comp["low_rank"]["history"]) == 2
    art = res.manifest["artifacts"][0]
    assert rows[f"export {art['file']}"]["bytes"] == art["bytes"]
    val = res.manifest["validation"]["artifacts"][art["file"]]
    assert val["top1_agreement"] >= 0.85  # against the dense source
    report = (tmp_path / "b" / "report.md").read_text()
    assert "## Compression" in report and "low_rank" in report
    html = (tmp_path / "b" / "report.html").read_text()
    assert "Compression stages: accuracy vs" in html
    on_disk = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert on_disk["compression"]["stages"] == comp["stages"]


def _onnx_mlp(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    d = load_digits()
    x, y = (d.data / 16.0).astype(np.float32), d.target
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = MLPClassifier(hidden_layer_sizes=(96,), max_iter=150, random_state=0).fit(x[:1400], y[:1400])
    w1, w2 = (c.astype(np.float32) for c in clf.coefs_)
    b1, b2 = (b.astype(np.float32) for b in clf.intercepts_)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["hr"]),
             helper.make_node("MatMul", ["hr", "w2"], ["o"], name="fc2"),
             helper.make_node("Add", ["o", "b2"], ["logits"])]
    inits = [numpy_helper.from_array(w1.T.copy(), "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], inits)
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path), x[1400:], y[1400:]


def test_onnx_gemm_and_matmul_initializers_factorized_with_the_cost_measured(tmp_path):
    pytest.importorskip("onnxruntime")
    from edgeship.converters.compress.lowrank_onnx import factorize_onnx
    from edgeship.converters.prune_onnx import onnx_accuracy_cost

    src, xte, yte = _onnx_mlp(tmp_path)
    dst = str(tmp_path / "lr.onnx")
    sec = factorize_onnx(src, dst, rank=24, energy=0.9)
    assert [r["name"] for r in sec["layers"]] == ["fc1"]  # fc2 (96x10) saves nothing at rank 24
    assert sec["layers"][0]["shape"] == [64, 96] and sec["factorized_params_after"] == 24 * (64 + 96)
    cost = onnx_accuracy_cost(src, dst, xte, yte)
    assert cost["top1_agreement"] >= 0.9 and cost["drop_points"] <= 5
    more = str(tmp_path / "more.onnx")
    factorize_onnx(src, more, rank=38, energy=0.9)  # the largest rank that still saves weights
    assert onnx_accuracy_cost(src, more, xte, yte)["cosine"] > cost["cosine"]


def _onnx_cnn(tmp_path, rank: int):
    """Conv 64 -> 128 (3x3, stride 2, pads 1; a kernel of matrix rank ``rank``) -> Relu -> Flatten -> Gemm 10."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = (rng.normal(size=(128, rank)) @ rng.normal(size=(rank, 64 * 9))).reshape(128, 64, 3, 3) * 0.05
    fc = rng.normal(size=(10, 128 * 16)) * 0.05
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", strides=[2, 2], pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["logits"], name="fc", transB=1)]
    inits = [numpy_helper.from_array(w.astype(np.float32), "w"), numpy_helper.from_array(np.full(128, 0.1, np.float32), "b"),
             numpy_helper.from_array(fc.astype(np.float32), "fc"), numpy_helper.from_array(np.zeros(10, np.float32), "fb")]
    g = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64, 8, 8])],
                          [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 10])], inits)
    import onnx

    path = tmp_path / "cnn.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def test_onnx_conv_factorized_exactly_at_its_rank_and_auto_skips_what_would_not_pay(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from edgeship.converters.compress.lowrank_onnx import factorize_onnx
    from edgeship.converters.prune_onnx import onnx_accuracy_cost

    src = _onnx_cnn(tmp_path, 4)
    x = np.random.default_rng(1).uniform(0, 1, (32, 64, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(src).run(None, {"x": x})[0]
    y = np.argmax(ref, -1)
    dst = str(tmp_path / "lr.onnx")
    sec = factorize_onnx(src, dst, rank="auto", energy=0.99999)
    rows = {r["name"]: r for r in sec["layers"]}
    assert rows["conv"]["class"] == "Conv" and rows["conv"]["rank"] == 4  # 4 x (576 + 128) of 576 x 128 MACs
    np.testing.assert_allclose(ort.InferenceSession(dst).run(None, {"x": x})[0], ref, rtol=1e-3, atol=1e-4)
    cost = onnx_accuracy_cost(src, dst, x, y)
    assert cost["top1_agreement"] == 1.0 and cost["count"] == 32
    low = str(tmp_path / "low.onnx")
    factorize_onnx(src, low, rank=2, energy=0.9)  # below the kernel's rank: an approximation, measured
    assert onnx_accuracy_cost(src, low, x, y)["cosine"] < cost["cosine"]
    with pytest.raises(UnsupportedModelError, match=r"conv: rank 4 saves [\d,]+ MACs per output position"):
        small = _onnx_cnn(tmp_path, 4)
        import onnx
        from onnx import numpy_helper

        m = onnx.load(small)  # the same conv with 32 filters: 4 x (576 + 32) saves too little per position
        for i, init in enumerate(m.graph.initializer):
            if init.name in ("w", "b", "fc"):
                a = numpy_helper.to_array(init)
                a = a[:32] if init.name != "fc" else a[:, : 32 * 16]
                m.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(a), init.name))
        onnx.save(m, small)
        factorize_onnx(small, str(tmp_path / "s.onnx"), rank="auto", energy=0.99999)


def test_onnx_source_low_rank_through_convert(tmp_path):
    pytest.importorskip("onnxruntime")
    src, xte, yte = _onnx_mlp(tmp_path)
    res = convert(src, tmp_path / "b", precision="fp32", formats="onnx", calib=None, eval_data=(xte, yte),
                  input_shape=(1, 64), compress=CompressOptions(low_rank=24))
    comp = res.manifest["compression"]
    assert comp["low_rank"]["accuracy_cost"]["count"] == len(xte)
    assert res.manifest["validation"]["artifacts"]["model.fp32.onnx"]["top1_agreement"] >= 0.9


def test_cli_compression_flags_in_cli_words(capfd, digits_cnn_file, digits, tmp_path):
    from edgeship.cli import main

    x, y = digits
    np.savez(tmp_path / "d.npz", x=x[:300], y=y[:300])
    data = str(tmp_path / "d.npz")
    assert main(["convert", digits_cnn_file, "-o", str(tmp_path / "o"), "--calib", data, "--distill"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--train-data" in err[0]
    assert main(["convert", digits_cnn_file, "-o", str(tmp_path / "o"), "--calib", data, "--low-rank", "0"]) == 2
    assert "--low-rank 0 must be a positive integer rank or 'auto'" in capfd.readouterr().err
    # a student setting without --distill is a mistake, not an ignored flag
    assert main(["convert", digits_cnn_file, "-o", str(tmp_path / "o"), "--calib", data, "--student-width", "0.5"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--distill" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_cli_low_rank_writes_the_compression_block(capfd, pruning_cnn_file, digits16, tmp_path):
    from edgeship.cli import main

    xtr, ytr = digits16["train"]
    np.savez(tmp_path / "t.npz", x=xtr, y=ytr)
    out = tmp_path / "o"
    assert main(["convert", pruning_cnn_file, "-o", str(out), "--calib", str(tmp_path / "t.npz"), "--low-rank", "8",
                 "--low-rank-epochs", "1", "--train-data", str(tmp_path / "t.npz")]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["compression"]["low_rank"]["rank"] == 8 and m["compression"]["low_rank"]["epochs"] == 1
