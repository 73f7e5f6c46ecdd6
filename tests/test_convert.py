"""convert(): every TFLite precision, calibration sources end to end, Keras flavours, refusals."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("EDGESHIP_PROGRESS", "0")

import edgeship.runtime as rt  # noqa: E402
from edgeship.converters import CalibMethod, ConversionResult, IOType, Precision, convert  # noqa: E402
from edgeship.errors import (  # noqa: E402
    BundleExistsError,
    CalibrationError,
    InputError,
    UnsupportedModelError,
    ValidationFailedError,
)

keras = pytest.importorskip("keras")


pytestmark = pytest.mark.slow  # every test here converts (or trains)


@pytest.fixture(scope="module")
def trained(digits_cnn):
    """The session's digits CNN (tests/conftest.py): Conv2D(8) -> Dense(10), 4 epochs on digits[:1200]."""
    return digits_cnn


@pytest.fixture(scope="module")
def calib_npz(tmp_path_factory, digits):
    x, y = digits
    p = tmp_path_factory.mktemp("data") / "calib.npz"
    np.savez(p, x=x[1200:1400], y=y[1200:1400])
    return p


@pytest.fixture(scope="module")
def eval_xy(digits):
    x, y = digits
    return x[1400:1600], y[1400:1600]


PRECISIONS = [
    ("fp32", "float", np.float32),
    ("fp16", "float", np.float32),
    ("dynamic", "float", np.float32),
    ("int8", "int8", np.int8),
    ("int8", "uint8", np.uint8),
    ("int8", "float", np.float32),
    ("int16x8", "int16", np.int16),
]

# What each precision must keep, on the 200 held-out digits, against the Keras model. Measured
# (`pytest tests/test_convert.py -k each_precision`, the session CNN of tests/conftest.py):
# fp32 max |diff| 6.9e-7, top-1 agreement 100%, accuracy unchanged; fp16 1.9e-4, 100%, unchanged;
# dynamic 5.5e-3, 100%, unchanged; int8 (any I/O) 1.2e-2, 99.0%, -0.5 points; int16x8 5.0e-3,
# 100%, unchanged. Bounds: the measurement plus a margin for noise (2-5x on the error, 1-3 of
# the 200 samples). (max |output diff|, min top-1 agreement, max accuracy drop in points,
# the weights' dtype in the file)
BOUNDS = {
    "fp32": (1e-5, 1.0, 0.0, np.float32),
    "fp16": (1e-3, 0.995, 0.5, np.float16),
    "dynamic": (0.02, 0.99, 1.0, np.int8),
    "int8": (0.04, 0.97, 2.0, np.int8),
    "int16x8": (0.015, 0.99, 1.0, np.int8),
}


@pytest.mark.parametrize("precision, io, dtype", PRECISIONS, ids=[f"{p}-{i}" for p, i, _ in PRECISIONS])
def test_each_precision(tmp_path, trained, calib_npz, eval_xy, precision, io, dtype):
    res = convert(trained, tmp_path / "b", calib=str(calib_npz), precision=precision, io=io, eval_data=eval_xy,
                  calib_count=64)
    assert isinstance(res, ConversionResult)
    art = res.manifest["artifacts"][0]
    assert art["file"] == f"model.{precision}.tflite" and art["precision"] == precision and art["io"] == io
    fname = os.path.join(res.bundle, art["file"])
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=fname)
    ind = it.get_input_details()[0]
    assert ind["dtype"] == dtype and art["inputs"][0]["dtype"] == np.dtype(dtype).name
    q = art["inputs"][0]["quantization"]
    if np.dtype(dtype).kind in "iu":
        assert q["scale"] == pytest.approx(list(ind["quantization_parameters"]["scales"]))
        assert q["zero_point"] == list(ind["quantization_parameters"]["zero_points"])
    max_diff, min_agree, max_drop, weights = BOUNDS[precision]
    # the precision asked for is the one in the file: its weights are stored in that type
    kernel_types = {np.dtype(d["dtype"]) for d in it.get_tensor_details() if len(d["shape"]) >= 2}
    assert np.dtype(weights) in kernel_types, (precision, kernel_types)
    v = res.manifest["validation"]["artifacts"][art["file"]]
    assert v["accuracy"] is not None and v["source_accuracy"] > 0.7
    assert 100 * (v["source_accuracy"] - v["accuracy"]) <= max_drop + 1e-9, v
    assert v["top1_agreement"] >= min_agree, v
    assert v["max_abs_error"] <= max_diff, v
    # the device runtime loads the bundle and reproduces the source outputs within the same bounds
    with rt.load(res.bundle) as m:
        out = next(iter(m.run(eval_xy[0]).values()))
    ref = trained(eval_xy[0], training=False).numpy()
    assert np.abs(out - ref).max() <= max_diff
    assert np.mean(np.argmax(out, 1) == np.argmax(ref, 1)) >= min_agree
    assert art["file"] in res.table()
    if precision == "dynamic":
        assert any("2x slower" in w for w in res.warnings) and any("slower" in n for n in art["notes"])


def test_enums_and_float_precision_io_warning(tmp_path, trained, calib_npz):
    res = convert(trained, tmp_path / "b", calib=str(calib_npz), precision=Precision.INT8, io=IOType.UINT8,
                  calib_method=CalibMethod.MINMAX, calib_count=32)
    assert res.manifest["artifacts"][0]["io"] == "uint8"
    res = convert(trained, tmp_path / "c", calib=str(calib_npz), precision="fp32", calib_count=32)
    assert res.manifest["artifacts"][0]["io"] == "float"
    assert any("io='int8' does not apply" in w for w in res.warnings)


def test_bad_option_values_are_typed_errors(tmp_path, trained, calib_npz):
    with pytest.raises(InputError, match=r"precision='int4'.*'fp32'"):
        convert(trained, tmp_path / "b", calib=str(calib_npz), precision="int4")
    with pytest.raises(InputError, match=r"io='int32'"):
        convert(trained, tmp_path / "b", calib=str(calib_npz), io="int32")
    with pytest.raises(InputError, match="uint8"):
        convert(trained, tmp_path / "b", calib=str(calib_npz), precision="int16x8", io="uint8")
    with pytest.raises(InputError, match="formats='tensorrt'"):
        convert(trained, tmp_path / "b", calib=str(calib_npz), formats=("tensorrt",))
    with pytest.raises(InputError, match="max_drop"):
        convert(trained, tmp_path / "b", calib=str(calib_npz), max_drop=-1)
    with pytest.raises(CalibrationError, match="needs calibration data"):
        convert(trained, tmp_path / "b")
    with pytest.raises(UnsupportedModelError, match="no loader"):
        convert(object(), tmp_path / "b", calib=str(calib_npz))
    assert not (tmp_path / "b").exists()


def test_folder_calibration_gives_labels_accuracy_and_preprocessing(tmp_path, trained, digits):
    cv2 = pytest.importorskip("cv2")
    x, y = digits
    root = tmp_path / "images"
    for i in range(1200, 1360):
        d = root / f"digit_{y[i]}"
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i}.png"), (x[i, :, :, 0] * 255).round().astype(np.uint8))
    res = convert(trained, tmp_path / "b", calib=str(root), calib_count=100)
    man = res.manifest
    assert man["calibration"]["kind"] == "folder" and man["calibration"]["count"] <= 100
    assert man["labels"] == [f"digit_{k}" for k in range(10)]
    assert man["preprocessing"]["size"] == [8, 8] and man["preprocessing"]["color"] == "gray"
    v = man["validation"]["artifacts"]["model.int8.tflite"]
    assert v["accuracy"] is not None and v["source_accuracy"] > 0.7
    assert "held out" in man["validation"]["data"]
    assert any("no preprocessing given" in w for w in res.warnings)
    with rt.load(res.bundle) as m:  # the manifest's preprocessing and labels work on a device
        top = m.classify(cv2.imread(str(next((root / "digit_3").iterdir())), cv2.IMREAD_GRAYSCALE), top_k=1)
    assert top[0].label.startswith("digit_")


def test_iterable_and_random_calibration(tmp_path, trained, digits, eval_xy):
    x, _ = digits
    res = convert(trained, tmp_path / "it", calib=(x[i] for i in range(1200, 1300)), eval_data=eval_xy,
                  calib_count=50)
    assert res.manifest["calibration"]["kind"] == "iterable" and res.manifest["calibration"]["count"] == 50
    res = convert(trained, tmp_path / "rnd", calib="random", eval_data=eval_xy, calib_count=32)
    assert res.manifest["calibration"]["kind"] == "random"
    report = open(os.path.join(res.bundle, "report.md"), encoding="utf-8").read()
    assert "random noise" in report
    assert any("random" in w for w in res.warnings)


def test_keras3_file_tf_keras_file_and_saved_model(tmp_path, trained, digits, calib_npz, eval_xy):
    tf_keras = pytest.importorskip("tf_keras")
    x, y = digits
    p = tmp_path / "digits.keras"
    trained.save(p)
    res = convert(str(p), tmp_path / "k3", calib=str(calib_npz), eval_data=eval_xy, calib_count=48)
    src = res.manifest["source"]
    from edgeship.bundle import sha256_file

    assert src["format"] == "keras3" and src["sha256"] == sha256_file(str(p)) and "keras" in src["framework_versions"]

    tf_keras.utils.set_random_seed(0)
    tk = tf_keras.Sequential([
        tf_keras.Input((8, 8, 1)),
        tf_keras.layers.Conv2D(8, 3, activation="relu", padding="same"),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(10, activation="softmax"),
    ])
    tk.compile("adam", "sparse_categorical_crossentropy")
    tk.fit(x[:1200], y[:1200], epochs=4, batch_size=64, verbose=0)
    tp = tmp_path / "tfk.keras"
    tk.save(tp)
    res = convert(str(tp), tmp_path / "tfk", calib=str(calib_npz), eval_data=eval_xy, calib_count=48)
    assert res.manifest["source"]["format"] == "tf_keras"
    v = res.manifest["validation"]["artifacts"]["model.int8.tflite"]
    assert v["top1_agreement"] > 0.85

    sm = tmp_path / "sm"
    trained.export(str(sm), format="tf_saved_model", verbose=False)
    res = convert(str(sm), tmp_path / "smb", calib=str(calib_npz), eval_data=eval_xy, calib_count=48)
    assert res.manifest["source"]["format"] == "saved_model"
    assert res.manifest["settings"]["tflite_converter"] == "from_saved_model"
    assert res.manifest["validation"]["artifacts"]["model.int8.tflite"]["top1_agreement"] > 0.85


def test_dynamic_spatial_input_fixed_by_input_shape(tmp_path, eval_xy):
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((None, None, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")])
    res = convert(m, tmp_path / "b", calib=eval_xy[0][:100], eval_data=eval_xy[0][100:], precision="fp32",
                  input_shape=(8, 8, 1))
    art = res.manifest["artifacts"][0]
    assert art["inputs"][0]["shape"] == [1, 8, 8, 1]
    assert res.manifest["validation"]["artifacts"][art["file"]]["cosine"] > 0.999


def test_max_drop_failure_writes_nothing(tmp_path, trained, digits, eval_xy):
    x, _ = digits
    # Calibrating on data at 5% of the real range clips every real input: a genuinely bad int8 model.
    bad_calib = x[1200:1300] * 0.05
    ok = convert(trained, tmp_path / "measured", calib=bad_calib, eval_data=eval_xy, calib_count=64)
    v = ok.manifest["validation"]["artifacts"]["model.int8.tflite"]
    drop = 100 * (v["source_accuracy"] - v["accuracy"])
    assert drop > 5  # the damage is real, measured without max_drop
    out = tmp_path / "strict"
    with pytest.raises(ValidationFailedError, match="max_drop=5"):
        convert(trained, out, calib=bad_calib, eval_data=eval_xy, calib_count=64, max_drop=5)
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_collapsed_model_refused_without_max_drop(tmp_path, trained, eval_xy):
    # All-zero calibration data gives degenerate ranges: every input maps to the same output.
    with pytest.raises(ValidationFailedError, match="collapsed"):
        convert(trained, tmp_path / "b", calib=np.zeros((32, 8, 8, 1), np.float32), eval_data=eval_xy)
    assert not (tmp_path / "b").exists()


def test_existing_output_refused_before_any_work(tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    # the model path does not even exist: the bundle check comes first
    with pytest.raises(BundleExistsError, match="--force"):
        convert(str(tmp_path / "no_such_model.keras"), out, calib="random")
