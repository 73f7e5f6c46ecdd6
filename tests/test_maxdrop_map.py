"""``convert --eval DIR --max-drop`` on a detector with labelled images (issue 12).

The repo's demo detector converted to INT8 with a labelled evaluation folder (YOLO txt
labels, the layout ``edgeship eval --data`` reads): validation measures mAP@0.5:0.95 of
the source and of the artifact against the labels, records both (and on how many
labelled images) in the manifest and the report, and ``--max-drop`` is compared with
``100 * (source - artifact)``; a limit the artifact misses fails with exit 2 and writes
nothing. Without labels, the same folder validates by agreement with the source (F1).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from _shared import write_demo_scenes

pytestmark = pytest.mark.slow  # real conversions (and the session's demo detector, trained once)

SCENES = 40


def _write_scenes(folder: str, mod, n: int, seed: int = 4242) -> str:
    return write_demo_scenes(folder, mod, n, seed)


@pytest.fixture(scope="module")
def setup(demo_detector, tmp_path_factory):
    mod, int8_bundle, _ = demo_detector
    s = mod.DetectorSettings()
    work = tmp_path_factory.mktemp("maxdrop_map")
    keras_file = mod.keras_path(os.path.dirname(int8_bundle))
    x, _, _ = mod.make_dataset(64, s, s.seed + 7)
    calib = str(work / "calib.npy")
    np.save(calib, x)
    images = _write_scenes(str(work / "val"), mod, SCENES)
    return keras_file, calib, images, work


def _convert(main, capfd, keras_file, calib, images, out, *extra):
    code = main(["convert", keras_file, "-o", out, "--calib", calib, "--eval", images, "--task", "detection",
                 "--labels", "circle,square,triangle", "--allow-unsafe", "--json", *extra])
    cap = capfd.readouterr()
    return code, cap


def test_int8_detector_max_drop_uses_map_against_labels(setup, capfd):
    from edgeship.cli import main

    keras_file, calib, images, work = setup
    out = str(work / "int8")
    code, cap = _convert(main, capfd, keras_file, calib, images, out, "--max-drop", "5")
    assert code == 0, cap.err
    man = json.loads(cap.out)["manifest"]
    val = man["validation"]
    (v,) = val["artifacts"].values()
    assert v["drop_metric"] == "map50_95" and v["labelled_images"] == SCENES and val["count"] == SCENES
    assert 0.15 < v["source_map50_95"] <= v["source_map50"] and 0.15 < v["map50_95"] <= v["map50"]
    assert v["drop_points"] == pytest.approx(100 * (v["source_map50_95"] - v["map50_95"]))
    assert v["drop_points"] <= 5
    assert v["detection_f1"] is not None  # agreement with the source still guards the collapse
    assert f"{SCENES} labelled images" in val["data"] and "mAP@0.5:0.95" in val["data"]
    report = open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert f"mAP@0.5:0.95 {v['map50_95']:.3f} (source {v['source_map50_95']:.3f}, {SCENES} labelled images)" in report
    # the same figure as `edgeship eval` on the written bundle and the same images
    assert main(["eval", out, "--data", images, "--json"]) == 0
    (m,) = json.loads(capfd.readouterr().out)["artifacts"].values()
    assert m["map"] == pytest.approx(v["map50_95"], abs=1e-4)

    # a limit below the measured mAP drop: exit 2, one line naming the metric, nothing written
    drop = v["drop_points"]
    with capfd.disabled():  # the figures, for the record (pytest -s)
        print(f"mAP@0.5:0.95 source {v['source_map50_95']:.4f} int8 {v['map50_95']:.4f} drop {drop:.3f} points; "
              f"mAP@0.5 {v['source_map50']:.4f} -> {v['map50']:.4f}; F1 {v['detection_f1']:.3f}; eval {m['map']:.4f}")
    if drop <= 0:  # the trained demo detector differs by CPU (TensorFlow's kernels): INT8 may lose nothing here
        pytest.skip(f"INT8 kept every point of mAP on these scenes (drop {drop:.3f}): no max_drop >= 0 is below it, "
                    "so the refusal cannot be exercised with this model")
    failing = str(work / "strict")
    code, cap = _convert(main, capfd, keras_file, calib, images, failing, "--max-drop", f"{drop / 2:.6f}")
    assert code == 2
    assert "mAP@0.5:0.95 against the labels dropped" in cap.err and f"{SCENES} labelled images" in cap.err
    assert not os.path.exists(failing)


def test_without_labels_max_drop_stays_detection_agreement(setup, capfd):
    from edgeship.cli import main

    keras_file, calib, images, work = setup
    bare = str(work / "bare")
    shutil.copytree(images, bare)  # the images without their labels/ folder
    out = str(work / "agree")
    code, cap = _convert(main, capfd, keras_file, calib, bare, out, "--max-drop", "50")
    assert code == 0, cap.err
    (v,) = json.loads(cap.out)["manifest"]["validation"]["artifacts"].values()
    assert v["detection_f1"] is not None and "map50_95" not in v and "drop_metric" not in v
