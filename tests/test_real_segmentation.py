"""A real segmentation-style model with a dynamic input size (issue 12): the PP-OCRv4 text
detector (``ppocrv4_det.onnx``, rapidocr-onnxruntime 1.4.4; ``[1,3,H,W]`` -> ``[1,1,H,W]``
text probability map) is inferred ``segmentation``, converts to INT8 ONNX without being
refused (masks measured by mIoU against FP32 on held-out photos), keeps its dynamic
height/width in the artifact and the manifest, and runs at two sizes through
``edgeship.runtime``. ``--input-shape`` fixes some dimensions and leaves others dynamic
(``?``); other spellings are exit 2 naming ``--input-shape``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _real_fixtures import real_file, real_image, video_frames

from edgeship.preprocess import PreprocessSpec

pytestmark = pytest.mark.slow

SIZE = (480, 480)
SPEC = dict(size=SIZE, layout="NCHW", color="bgr", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
PREPROCESS = "size=480x480,color=bgr,mean=0.485:0.456:0.406,std=0.229:0.224:0.225"
CALIB = ("china.jpg", "flower.jpg", "chelsea.png", "home.jpg", "basketball1.png", "messi5.jpg")
HELD_OUT = ("astronaut.png", "coffee.png", "fruits.jpg", "basketball2.png")


def _held_out() -> list:
    out = []
    for name in HELD_OUT:
        img = real_image(name)
        h, w = img.shape[:2]
        out += [img, img[: h * 3 // 4, : w * 3 // 4]]
    return out


def _tensors(images, size=SIZE) -> np.ndarray:
    spec = PreprocessSpec(**{**SPEC, "size": size})
    return np.concatenate([spec.to_input(im, layout="NCHW") for im in images])


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from edgeship.converters import convert

    calib = _tensors([real_image(n) for n in CALIB] + video_frames([0, 300]))
    out = tmp_path_factory.mktemp("seg") / "int8"
    res = convert(real_file("ppocrv4_det.onnx"), str(out), calib=calib, eval_data=_tensors(_held_out()),
                  formats=("onnx",), preprocess=PREPROCESS, input_shape=(1, 3, None, None))
    return out, res


def test_task_inferred_segmentation_and_int8_validated_by_miou_not_refused(bundle):
    out, res = bundle
    man = json.loads((out / "manifest.json").read_text())
    assert man["task"] == "segmentation" and man["task_reason"].startswith("inferred from the graph")
    assert any("task= segmentation inferred" in w for w in res.warnings)
    v = man["validation"]["artifacts"]["model.int8.onnx"]
    assert v["top1_agreement"] is None  # a map is not one class per sample
    # the INT8 masks agree with the source's on held-out photos (0.74 measured at 480); plain
    # quantize_static and edgeship without the seg_head rewrite give mIoU ~0.50 (all text lost),
    # which convert refuses (< 0.6)
    assert v["miou"] >= 0.7 and v["pixel_accuracy"] >= 0.99, v
    q = man["settings"]["onnx_quantization"]["segmentation_head"]
    assert q["rewrites"]["hardswish"] == 24 and q["rewrites"]["folded_affine"] > 0
    assert "p2o.Sigmoid.0" in q["head_nodes"] and "p2o.ConvTranspose.2" in q["head_nodes"]
    notes = man["artifacts"][0]["notes"]
    assert any(n.startswith("segmentation:") for n in notes), notes
    assert any("calibrated at 2 sizes: 480x480, 352x352" in n for n in notes), notes


def test_artifact_keeps_dynamic_height_width_and_runs_at_two_sizes(bundle):
    from edgeship import runtime

    out, _ = bundle
    man = json.loads((out / "manifest.json").read_text())
    assert man["artifacts"][0]["inputs"][0]["shape"] == [1, 3, None, None]
    assert man["source"]["inputs"][0]["shape"] == [1, 3, None, None]
    assert man["settings"]["input_shape"] == [1, 3, None, None]
    assert man["dynamic_size"] == {"stride": 32}
    with runtime.load(str(out / "model.int8.onnx")) as model:
        assert model.inputs[0].shape[2] is None and model.inputs[0].shape[3] is None
        img = real_image("coffee.png")
        for h, w in ((320, 480), (256, 224)):
            (y,) = model.run(_tensors([img], (h, w))).values()
            assert y.shape == (1, 1, h, w)
            assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0


def test_input_shape_fixes_some_dims_and_leaves_the_others_dynamic(tmp_path):
    from edgeship.converters import convert

    res = convert(real_file("ppocrv4_det.onnx"), str(tmp_path / "fp32"), precision="fp32", formats=("onnx",),
                  input_shape=(1, 3, 256, None), preprocess="size=256x320,color=bgr")
    art = res.manifest["artifacts"][0]
    assert art["inputs"][0]["shape"] == [1, 3, 256, None]
    from edgeship import runtime

    with runtime.load(str(tmp_path / "fp32" / art["file"])) as model:
        for w in (320, 192):
            (y,) = model.run(np.zeros((1, 3, 256, w), np.float32)).values()
            assert y.shape == (1, 1, 256, w)


def test_cli_input_shape_spellings(tmp_path, capsys):
    from edgeship.cli import main
    from edgeship.cli.convert import parse_shape

    assert parse_shape("1,3,?,?") == (1, 3, None, None)
    assert parse_shape("1,3,320,?") == (1, 3, 320, None)
    for bad in ("1,3,-1,-1", "1,3,h,w", "1,3,,320"):
        code = main(["convert", real_file("ppocrv4_det.onnx"), "-o", str(tmp_path / "x"), "--formats", "onnx",
                     "--precision", "fp32", "--input-shape", bad])
        err = capsys.readouterr().err
        assert code == 2 and "--input-shape" in err and "?" in err, (bad, err)
        assert not (tmp_path / "x").exists()


def test_tflite_of_a_dynamic_model_is_refused_in_one_line(tmp_path, capsys):
    from edgeship.cli import main

    code = main(["convert", real_file("ppocrv4_det.onnx"), "-o", str(tmp_path / "t"), "--formats", "tflite",
                 "--precision", "fp32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "fixed input size" in err and "--input-shape" in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.slow
def test_auto_fallback_on_segmentation_keeps_noisiest_tensors_float_and_raises_miou(tmp_path):
    """The ONNX fallback loop on a dense map: candidates are the noisiest tensors (per-tensor
    QDQ-vs-float SQNR on two samples) in growing groups (8, then 16), the map head float in
    every attempt; the mIoU of the masks against FP32 goes up and what was kept float is listed."""
    import onnxruntime as ort

    from edgeship.converters.refine import OnnxNodeErrors, fallback
    from edgeship.metrics_segmentation import miou

    size = (320, 320)  # text pixels at this size: coffee.png and its crop
    calib = _tensors([real_image(n) for n in CALIB[:4]], size)
    held = _tensors(_held_out(), size)
    src = real_file("ppocrv4_det.onnx")

    def masks(path):
        s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return [s.run(None, {s.get_inputs()[0].name: x[None]})[0][0, 0] > 0.5 for x in held]

    ref = masks(src)

    def evaluate(path):
        return miou(ref, masks(path), 2)

    sens = OnnxNodeErrors(src, calib, workdir=str(tmp_path), dense_map=True, input_shape=(1, 3, *size))
    cands = sens.candidates()
    assert [c.node for c in cands[:2]] == ["8 noisiest tensors", "16 noisiest tensors"]
    assert "p2o.Sigmoid.0" in sens.fixed and not any("p2o.Sigmoid.0" in c.group for c in cands)
    base = evaluate(sens.plain_path)["miou"]
    res = fallback(sens, evaluate, max_drop=0.0, baseline={"drop_points": 100 * (1 - base), "miou": base},
                   max_attempts=2)
    assert [a["miou"] for a in res.attempts][0] == base and len(res.attempts) == 3
    best = max(a["miou"] for a in res.attempts[1:])
    assert best > base, res.attempts
    assert 8 <= len(res.kept_float) and not set(res.kept_float) & sens.fixed
