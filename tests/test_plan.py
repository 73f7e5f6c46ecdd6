"""convert()'s plan: options refused before any work, preprocessing from the model's real layout,
label counts, stable output names, and the option dataclasses."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGESHIP_PROGRESS", "0")

import edgeship.runtime as rt  # noqa: E402
from edgeship.converters import AdvancedOptions, PruneOptions, convert  # noqa: E402
from edgeship.converters.plan import resolve  # noqa: E402
from edgeship.errors import CalibrationError, InputError  # noqa: E402
from edgeship.vocab import Format, Precision, Target  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def nchw_onnx(tmp_path_factory):
    """An NCHW ONNX classifier with a dynamic batch, (None, 3, 16, 12) -> 5 classes (softmax)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    g = rng.normal(0, 1.0, (4, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "g"], ["z"], name="fc"),
        helper.make_node("Softmax", ["z"], ["probs"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes, "nchw", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16, 12])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 5])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(g, "g")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    path = tmp_path_factory.mktemp("nchw") / "nchw.onnx"
    onnx.save(m, str(path))
    return str(path)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """30 colour images of 40x30 pixels (larger than the model input: they are resized)."""
    cv2 = pytest.importorskip("cv2")
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(30):
        img = np.zeros((30, 40, 3), np.uint8)
        img[:, : 4 + i] = rng.integers(0, 255, 3)  # bars of different widths and colours
        cv2.imwrite(str(root / f"img{i:02d}.png"), img)
    return str(root)


def test_preprocess_without_size_takes_the_size_from_an_nchw_model(nchw_onnx, image_folder, tmp_path):
    res = convert(nchw_onnx, tmp_path / "b", calib=image_folder, precision="fp32", formats="onnx",
                  preprocess="scale=1/255")
    pre = res.manifest["preprocessing"]
    assert pre["size"] == [16, 12] and pre["layout"] == "NCHW" and pre["color"] == "rgb"
    calib = np.load(os.path.join(res.bundle, "calibration.npz"))["x"]
    assert calib.shape[1:] == (3, 16, 12)
    with rt.load(res.bundle) as m:  # the bundle runs: what --preprocess size=3x16 used to break
        out = m.run(calib[:2])
    assert next(iter(out.values())).shape == (2, 5)


def test_folder_calibration_of_an_nchw_model_without_preprocess(nchw_onnx, image_folder, tmp_path):
    res = convert(nchw_onnx, tmp_path / "b", calib=image_folder, precision="fp32", formats="onnx")
    assert res.manifest["preprocessing"]["layout"] == "NCHW"
    assert res.manifest["preprocessing"]["size"] == [16, 12]


@pytest.mark.parametrize("spec", ["size=224x224", {"size": [224, 224]}, "size=16x12,color=gray"])
def test_a_size_that_disagrees_with_the_model_is_refused_with_npy_calibration(nchw_onnx, tmp_path, spec):
    npy = tmp_path / "calib.npy"
    np.save(npy, np.random.default_rng(0).random((20, 3, 16, 12), dtype=np.float32))
    with pytest.raises(InputError, match="preprocess"):
        convert(nchw_onnx, tmp_path / "b", calib=str(npy), precision="fp32", formats="onnx", preprocess=spec)
    assert not (tmp_path / "b").exists()


def test_a_size_that_disagrees_with_a_keras_model_is_refused(digits_cnn_file, digits, tmp_path):
    x, _ = digits
    with pytest.raises(InputError, match=r"size=28x28"):
        convert(digits_cnn_file, tmp_path / "b", calib=x[:64], preprocess="size=28x28")
    assert not (tmp_path / "b").exists()


def test_labels_whose_count_differs_from_the_classes_are_refused(digits_cnn_file, digits, tmp_path):
    x, _ = digits
    with pytest.raises(InputError, match=r"labels has 3 names but the model has 10 classes"):
        convert(digits_cnn_file, tmp_path / "b", calib=x[:64], labels=["a", "b", "c"])
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(9)) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="9 names"):
        convert(digits_cnn_file, tmp_path / "b", calib=x[:64], labels=str(labels))
    assert not (tmp_path / "b").exists()
    res = convert(digits_cnn_file, tmp_path / "ok", calib=x[:64], precision="fp32",
                  labels=[f"digit {i}" for i in range(10)])
    assert res.manifest["labels"][3] == "digit 3"


def test_output_names_are_the_layer_names_and_the_same_on_every_conversion(digits_cnn_file, digits, tmp_path):
    import keras

    x, _ = digits
    layer = keras.saving.load_model(digits_cnn_file).layers[-1].name  # stored in the file
    names, keys, inputs = [], [], []
    for i in range(2):  # the same model file, loaded twice in one process: Keras renumbers its tensors
        res = convert(digits_cnn_file, tmp_path / f"b{i}", calib=x[:64], precision="fp32")
        names.append([t["name"] for t in res.manifest["source"]["outputs"]])
        with rt.load(res.bundle) as m:
            keys.append(list(m.run(x[:2])))
            inputs.append([t.name for t in m.inputs])
    assert names[0] == names[1] == [layer] == keys[0] == keys[1]
    assert not layer.startswith("keras_tensor")
    assert inputs[0] == inputs[1] and not inputs[0][0].startswith("keras_tensor"), inputs


def test_output_names_of_an_onnx_model_are_its_declared_names(nchw_onnx, tmp_path):
    res = convert(nchw_onnx, tmp_path / "b", precision="fp32", formats="onnx", input_shape=(1, 3, 16, 12))
    assert [t["name"] for t in res.manifest["source"]["outputs"]] == ["probs"]


def test_the_plan_is_frozen_and_refuses_bad_options_before_any_work(tmp_path):
    plan = resolve(model="m.onnx", output=tmp_path / "b", target="cpu,jetson", precision=None, io="int8")
    assert plan.precision is Precision.INT8 and plan.targets == (Target.CPU, Target.JETSON)
    assert plan.formats == (Format.TFLITE, Format.ONNX) and plan.export_target(Format.ONNX) == "jetson"
    with pytest.raises(AttributeError):
        plan.precision = Precision.FP32  # type: ignore[misc]
    for kw, match in [(dict(target="tpu"), "target='tpu'"), (dict(task="ranking"), "task='ranking'"),
                      (dict(max_drop=-1), "max_drop"), (dict(calib_count=0), "calib_count"),
                      (dict(prune=1.5), "prune=1.5"), (dict(prune_epochs=0, prune=0.5), "prune_epochs"),
                      (dict(auto_fallback=True), "auto_fallback needs max_drop"),
                      (dict(train_data=(np.zeros((2, 2)), np.zeros(2))), "train_data is used for pruning only")]:
        with pytest.raises(InputError, match=match):
            convert(object(), tmp_path / "b", **kw)  # an unloadable model: the options fail first
    for kw in (dict(calib=str(tmp_path / "nothing.npy")), dict(eval_data=str(tmp_path / "no-folder")),
               dict(prune=0.5, train_data=str(tmp_path / "none.npz"))):
        with pytest.raises(CalibrationError, match="does not exist"):
            convert(object(), tmp_path / "b", **kw)
    assert not (tmp_path / "b").exists()


def test_option_dataclasses_are_accepted_and_not_given_twice(digits_cnn_file, digits, tmp_path):
    x, _ = digits
    res = convert(digits_cnn_file, tmp_path / "b", calib=x[:200], precision="fp32",
                  advanced=AdvancedOptions(calib_count=40, seed=3))
    assert res.manifest["settings"]["calib_count"] == 40 and res.manifest["settings"]["seed"] == 3
    with pytest.raises(InputError, match="calib_count given both"):
        convert(digits_cnn_file, tmp_path / "c", calib=x[:200], calib_count=10, advanced=AdvancedOptions(calib_count=40))
    with pytest.raises(InputError, match="not both"):
        convert(digits_cnn_file, tmp_path / "c", calib=x[:200], prune=PruneOptions(sparsity=0.5), prune_epochs=3)
    with pytest.raises(InputError, match="prune=0.99"):
        convert(digits_cnn_file, tmp_path / "c", calib=x[:200], prune=PruneOptions(sparsity=0.99))


def test_jetson_target_step_writes_a_tensorrt_table_for_an_fp32_onnx_artifact(nchw_onnx, tmp_path):
    x = np.random.default_rng(0).random((24, 3, 16, 12), dtype=np.float32)
    res = convert(nchw_onnx, tmp_path / "b", calib=x, precision="fp32", target="jetson", io="float")
    rec = res.manifest["settings"]["jetson"]
    assert rec["artifact"] == "model.fp32.onnx" and rec["trt_calibration_table"] == "calibration.flatbuffers"
    assert os.path.getsize(os.path.join(res.bundle, "calibration.flatbuffers")) > 0
    with rt.load(res.bundle) as m:  # the extra files do not disturb the bundle
        assert next(iter(m.run(x[:1]).values())).shape == (1, 5)
