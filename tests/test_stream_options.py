"""Stream options as frozen values, and a stream over a bare NCHW ONNX model (a real engine).

The stream turns frames into inputs with the same rule as ``Model.classify``:
with ``interpolation="area"`` (the rule's default) every streamed result is
the one ``classify`` gives for the same decoded frame.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import edgeship.runtime as rt  # noqa: E402
from edgeship.errors import InputError  # noqa: E402
from edgeship.runtime.stream import (  # noqa: E402
    Display,
    SourceOptions,
    Stream,
    StreamOptions,
    Task,
    VideoSource,
    run_stream,
)
from edgeship.vocab import Task as VocabTask  # noqa: E402


def test_options_are_checked_once_and_frozen():
    opts = StreamOptions(task="detect", display="web", top_k=2, interpolation="area")
    assert opts.task is Task.DETECT and opts.display is Display.WEB and opts.interpolation.value == "area"
    assert StreamOptions(task=VocabTask.CLASSIFICATION).task is Task.CLASSIFY
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.top_k = 5
    for bad, needle in (({"top_k": 0}, "top_k"), ({"threshold": 2}, "threshold"), ({"iou": -0.1}, "iou"),
                        ({"duration": 0}, "duration"), ({"max_frames": 0}, "max_frames"), ({"port": 70000}, "port"),
                        ({"task": "segmnt"}, "task"), ({"display": "tv"}, "display"),
                        ({"interpolation": "cubic"}, "interpolation")):
        with pytest.raises(InputError, match=needle):
            StreamOptions(**bad)
    with pytest.raises(InputError, match="backoff"):
        SourceOptions(backoff=(2.0, 1.0))


def test_build_merges_keywords_and_source_options():
    base = StreamOptions(top_k=2)
    opts = StreamOptions.build(base, threshold=0.3, loop=True, realtime=True, source_options={"drop": True,
                                                                                           "realtime": False})
    assert (opts.top_k, opts.threshold) == (2, 0.3)
    assert opts.source.loop and opts.source.drop and not opts.source.realtime  # source_options wins
    assert base.source.loop is False  # the base is untouched
    with pytest.raises(InputError, match="unknown stream option"):
        StreamOptions.build(None, colour="red")
    with pytest.raises(InputError, match="source_options has unknown keys"):
        StreamOptions.build(None, source_options={"fsp": 30})
    kw = StreamOptions(threads=2, device="cpu", strict=True, artifact="onnx").load_kwargs()
    assert kw == {"threads": 2, "device": "cpu", "strict": True, "artifact": "onnx"}


@pytest.fixture(scope="module")
def nchw_onnx(tmp_path_factory):
    from test_tasks import nchw_classifier  # the same bare, dynamic-batch NCHW ONNX classifier

    return nchw_classifier(str(tmp_path_factory.mktemp("onnx") / "nchw.onnx"))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """A short MJPG clip of a real photograph panning (sklearn's sample image)."""
    datasets = pytest.importorskip("sklearn.datasets")
    bgr = np.ascontiguousarray(datasets.load_sample_image("flower.jpg")[:, :, ::-1])
    path = str(tmp_path_factory.mktemp("video") / "pan.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for i in range(12):
        w.write(np.ascontiguousarray(bgr[i * 10:i * 10 + 240, i * 20:i * 20 + 320]))
    w.release()
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return path, frames


def test_stream_on_a_bare_nchw_onnx_gives_what_classify_gives(nchw_onnx, video):
    path, frames = video
    with rt.load(nchw_onnx) as model:
        want = [model.classify(f, top_k=3) for f in frames]
        with Stream(model, path, StreamOptions(top_k=3, interpolation="area", draw=False)) as st:
            got = list(st)
    assert len(got) == len(frames) == 12
    for r in got:
        assert [c.id for c in r.results] == [c.id for c in want[r.index]]
        np.testing.assert_allclose([c.score for c in r.results], [c.score for c in want[r.index]], rtol=1e-5)


def test_run_stream_takes_an_options_object(nchw_onnx, video):
    path, frames = video
    opts = StreamOptions(max_frames=5, threads=1, top_k=1)
    s = run_stream(nchw_onnx, VideoSource(path, SourceOptions(loop=True)), opts, log=lambda m: None)
    assert s["frames"] == 5 and s["ended_by"] == "max_frames" and s["backend"] == "onnxruntime"
    assert s["stages_ms"]["preprocess"]["mean"] is not None
