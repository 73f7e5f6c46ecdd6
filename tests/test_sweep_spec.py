"""Sweep spec, trials, Pareto front and recommendation: no Ray, no conversion (fast)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from _sweep_shared import write_spec
from edgeship.cli.app import main
from edgeship.converters.sweep import expand, load_spec
from edgeship.converters.sweep.pareto import front, recommend, summarize
from edgeship.converters.sweep.report import markdown, render_html, table
from edgeship.converters.sweep.spec import Axes, Constraints, DataSpec, SweepSpec
from edgeship.errors import SweepSpecError

AXES = {"precision": ["fp32", "fp16", "dynamic", "int8"], "calib_count": [16, 32, 64]}


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "m.keras").write_bytes(b"model bytes v1")
    (tmp_path / "calib.npz").write_bytes(b"calib")
    (tmp_path / "eval.npz").write_bytes(b"eval")
    return tmp_path


def _spec(files, **kw):
    args = {"models": [("digits", "m.keras")], "data": {"calib": "calib.npz", "eval": "eval.npz"}, "axes": AXES,
            "constraints": {"max_drop": 1.0, "max_latency_ms": 5.0}}
    args.update(kw)
    return write_spec(files / "s.toml", **args)


def test_spec_is_frozen_with_absolute_paths(files):
    spec = load_spec(_spec(files))
    assert spec.name == "s" and spec.output == str(files / "s-sweep")
    assert spec.models[0].path == str(files / "m.keras") and spec.data.eval == str(files / "eval.npz")
    assert spec.axes.precision == ("fp32", "fp16", "dynamic", "int8") and spec.axes.target == ("cpu",)
    assert spec.constraints.max_drop == 1.0 and spec.constraints.objective == "latency"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"


@pytest.mark.parametrize("change, key", [
    ({"axes": {"precision": ["int4"]}}, "axes.precision"),
    ({"axes": {"calib_count": [0]}}, "axes.calib_count"),
    ({"axes": {"prune": [1.5]}}, "axes.prune"),
    ({"axes": {"prune_structure": ["2-4"]}}, "axes.prune_structure"),
    ({"axes": {"precisions": ["int8"]}}, "axes.precisions"),
    ({"axes": {"precision": []}}, "axes.precision"),
    ({"axes": {"target": ["tpu"]}}, "axes.target"),
    ({"models": []}, "model"),
    ({"models": [("digits", "missing.keras")]}, "model[0].path"),
    ({"data": {"calib": "calib.npz"}}, "data.eval"),
    ({"data": {"eval": "eval.npz"}}, "data.calib"),  # int8 needs calibration data
    ({"timing": {"engines": ["tensorrt-ish"]}}, "timing.engines"),
    ({"timing": {"runs": 0}}, "timing.runs"),
    ({"constraints": {"objective": "speed"}}, "constraints.objective"),
    ({"constraints": {"max_latency_ms": -1}}, "constraints.max_latency_ms"),
    ({"sweep": {"cpus_per_trial": "two"}}, "sweep.cpus_per_trial"),
])
def test_spec_errors_name_the_key(files, change, key):
    with pytest.raises(SweepSpecError) as err:
        load_spec(_spec(files, **change))
    assert err.value.key == key
    assert key in str(err.value)


def test_not_toml_and_unknown_table(files):
    (files / "bad.toml").write_text("[axes\nprecision = ")
    with pytest.raises(SweepSpecError, match="not valid TOML"):
        load_spec(files / "bad.toml")
    (files / "extra.toml").write_text(open(_spec(files)).read() + "\n[axez]\nx = 1\n")
    with pytest.raises(SweepSpecError, match="axez: unknown table") as err:
        load_spec(files / "extra.toml")
    assert err.value.key == "axez"


def test_cli_spec_error_is_one_line_exit_2(files, capsys):
    assert main(["sweep", _spec(files, axes={"precision": ["int4"]})]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgeship: error: sweep spec") and "axes.precision" in err[0]


def test_trials_are_content_addressed(files):
    spec = load_spec(_spec(files))
    trials = expand(spec)
    assert len(trials) == 12 and len({t.id for t in trials}) == 12
    assert [t.id for t in expand(load_spec(_spec(files)))] == [t.id for t in trials]  # stable
    # constraints decide the recommendation, not a trial's result: same ids
    same = expand(load_spec(_spec(files, constraints={"max_drop": 0.1})))
    assert [t.id for t in same] == [t.id for t in trials]
    # other model bytes: other trials
    (files / "m.keras").write_bytes(b"model bytes v2")
    assert not {t.id for t in expand(load_spec(_spec(files)))} & {t.id for t in trials}
    t = trials[0]
    assert t.options["precision"] == "fp32" and t.options["calib_count"] == 16
    assert t.label() == "digits fp32 calib_count=16"


def _rec(tid, precision, acc, src, p50, nbytes, target="cpu", node="n1"):
    art = f"model.{precision}.tflite"
    return {"id": tid, "label": f"digits {precision}", "model": "digits", "status": "done",
            "settings": {"precision": precision, "target": target},
            "conversion": {"artifacts": [{"file": art, "format": "tflite", "precision": precision, "bytes": nbytes,
                                          "gzip_bytes": nbytes, "accuracy": acc, "source_accuracy": src,
                                          "top1_agreement": 1.0, "drop_points": round(100 * (src - acc), 6)}]},
            "timing": {"node": node, "hostname": "h", "rows": [{"artifact": art, "engine": "litert",
                                                                 "p50_ms": p50, "p90_ms": p50}]}}


def _records():
    return [_rec("a", "fp32", 0.95, 0.95, 0.30, 24000), _rec("b", "int8", 0.945, 0.95, 0.10, 9000),
            _rec("c", "dynamic", 0.90, 0.95, 0.20, 9000),  # dominated by b (slower and less accurate)
            _rec("d", "int8", 0.93, 0.95, 0.05, 9000),
            {"id": "e", "label": "digits int16x8", "status": "failed", "failed_stage": "convert",
             "error": {"kind": "crash", "type": "WorkerCrashedError", "reason": "the worker process died"}}]


def _spec_obj(**cons) -> SweepSpec:
    return SweepSpec(name="t", output="", models=(), data=DataSpec(calib=None, eval=""), axes=Axes(),
                     constraints=Constraints(**cons))


def _summary(**cons):
    return summarize(_records(), _spec_obj(**cons))


def test_pareto_front_and_recommendation_under_constraints():
    s = _summary(max_drop=1.0, max_latency_ms=1.0)
    g = s["groups"][0]
    assert g["front"] == ["d:model.int8.tflite:litert", "b:model.int8.tflite:litert", "a:model.fp32.tflite:litert"]
    # d is the fastest but drops 2 points > max_drop 1: b is the fastest that meets both
    assert g["recommended"] == "b:model.int8.tflite:litert"
    assert s["failed"][0]["kind"] == "crash"
    by_bytes = recommend(s["candidates"], max_drop=0.1, objective="bytes")
    assert by_bytes["key"] == "a:model.fp32.tflite:litert"  # the only one within 0.1 points
    assert front([]) == []


def test_no_candidate_meets_the_constraints_says_so():
    s = _summary(max_drop=0.0, max_latency_ms=0.01)
    g = s["groups"][0]
    assert g["recommended"] is None and g["reason"].startswith("none of the 4 candidates meets")
    text = table(s)
    assert "no recommendation: none of the 4 candidates" in text and "failed trials: 1" in text
    assert "no recommendation" in markdown(s)
    assert "data:image/png;base64," in render_html(s)


def test_timings_of_different_nodes_are_never_compared():
    recs = [_rec("a", "fp32", 0.95, 0.95, 0.30, 24000, node="n1"), _rec("b", "int8", 0.95, 0.95, 0.10, 9000, node="n2")]
    spec = _spec_obj()
    s = summarize(recs, spec)
    assert len(s["groups"]) == 2 and {g["recommended"][0] for g in s["groups"]} == {"a", "b"}
    names = [g["name"] for g in s["groups"]]
    assert len(set(names)) == 2 and all(n.startswith("cpu@") and os.sep not in n for n in names)


def test_public_api_takes_a_dict_and_imports_nothing_heavy(files, monkeypatch):
    import subprocess
    import sys

    import edgeship

    monkeypatch.chdir(files)
    with pytest.raises(SweepSpecError) as err:
        edgeship.sweep({"model": [{"path": "m.keras"}], "data": {"calib": "calib.npz", "eval": "eval.npz"},
                        "axes": {"precision": ["int8"], "io": ["int4"]}})
    assert err.value.key == "axes.io"
    code = ("import sys, edgeship.converters.sweep as s, edgeship.cli.app; "
            "heavy = [m for m in ('ray', 'tensorflow', 'keras', 'onnx', 'matplotlib') if m in sys.modules]; "
            "assert not heavy, heavy")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
