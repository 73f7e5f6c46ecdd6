"""``edgeship sweep`` on a real local Ray (``ray.init(num_cpus=2)``): records, resume, failures, report.

The reference for "the same records" is the serial loop (``edgeship sweep --serial``) in a
fresh process, like the sweep's workers (TensorFlow started with the same bounded threads).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from _sweep_shared import AXES, CRASH_IN_WORKER, SLEEP_IN_WORKER, comparable, ray_processes, serial_records, \
    shared_inputs, wait_no_ray_processes, write_spec

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")

CONSTRAINTS = {"max_drop": 2.0, "max_latency_ms": 50.0}


@pytest.fixture(scope="module")
def local_ray():
    before = ray_processes()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray
    finally:
        ray.shutdown()
    assert wait_no_ray_processes(before) == [], "Ray left processes behind"


@pytest.fixture(scope="module")
def work(tmp_path_factory, digits, digits_cnn_file):
    return shared_inputs(tmp_path_factory.getbasetemp(), digits, digits_cnn_file)


def _spec(work, name, **kw):
    args = {"models": work["models"], "data": work["data"], "axes": AXES,
            "sweep": {"output": f"{name}-out"}, "constraints": CONSTRAINTS}
    args.update(kw)
    return write_spec(work["root"] / f"{name}.toml", **args)


@pytest.fixture(scope="module")
def swept(local_ray, work):
    """The 4-trial sweep run once on the local Ray."""
    from edgeship import sweep

    spec = _spec(work, "main")
    return spec, sweep(spec)


def test_local_ray_sweep_records_every_trial(swept):
    _spec_path, res = swept
    assert res.counts == {"trials": 4, "skipped": 0, "converted": 4, "timed": 4, "failed": 0}
    for rec in res.records:
        assert rec["status"] == "done"
        art = rec["conversion"]["artifacts"][0]
        assert art["precision"] == rec["settings"]["precision"] and art["bytes"] > 0
        assert 0.5 < art["accuracy"] <= 1.0 and art["drop_points"] is not None
        assert os.path.isfile(os.path.join(res.folder, rec["conversion"]["bundle"], "manifest.json"))
        row = rec["timing"]["rows"][0]
        assert row["engine"] == "litert" and row["p50_ms"] > 0
        with open(os.path.join(res.folder, "trials", f"{rec['id']}.json")) as fh:
            assert json.load(fh) == rec  # the record on disk is the record returned
    # every timing on one node, and the record says which
    assert len({r["timing"]["node"] for r in res.records}) == 1


def test_recommendation_meets_the_constraints(swept):
    _spec_path, res = swept
    g = res.summary["groups"][0]
    c = g["candidate"]
    assert g["target"] == "cpu" and c is not None
    assert c["drop_points"] <= CONSTRAINTS["max_drop"] and c["p50_ms"] <= CONSTRAINTS["max_latency_ms"]
    assert c["key"] in g["front"]
    fastest_ok = min((x for x in res.summary["candidates"] if x["drop_points"] <= CONSTRAINTS["max_drop"]),
                     key=lambda x: x["p50_ms"])
    assert c["p50_ms"] == fastest_ok["p50_ms"]
    assert "<- recommended" in res.table()


def test_rerun_performs_no_conversion(swept):
    from edgeship import sweep

    spec_path, res = swept
    paths = [os.path.join(res.folder, "trials", f"{r['id']}.json") for r in res.records]
    before = [os.stat(p).st_mtime_ns for p in paths]
    again = sweep(spec_path)
    assert again.counts == {"trials": 4, "skipped": 4, "converted": 0, "timed": 0, "failed": 0}
    assert [os.stat(p).st_mtime_ns for p in paths] == before
    assert again.records == res.records


def test_records_equal_the_serial_loop(swept, work):
    _spec_path, res = swept
    assert comparable(serial_records(work)) == comparable(res.records)


def test_constraints_none_can_meet_say_so(swept, work):
    """Other constraints on the same trials: no conversion, and the sweep says none meets them."""
    from edgeship import sweep

    res = sweep(_spec(work, "strict", sweep={"output": "main-out"}, constraints={"max_drop": 0.0,
                                                                              "max_latency_ms": 1e-6}))
    assert res.counts["converted"] == 0
    g = res.summary["groups"][0]
    assert g["recommended"] is None and g["reason"].startswith("none of the 4 candidates meets")
    assert "no recommendation" in res.table()


def test_ship_writes_the_recommended_bundle(swept, tmp_path):
    from edgeship import runtime, sweep

    spec_path, res = swept
    shipped = sweep(spec_path, ship=str(tmp_path / "ship")).shipped
    rec = res.summary["groups"][0]["candidate"]
    assert shipped == {"cpu": str(tmp_path / "ship" / "cpu")}
    with runtime.load(shipped["cpu"]) as m:
        assert m.artifact["file"] == rec["artifact"]
    assert open(os.path.join(shipped["cpu"], "manifest.json")).read() == \
        open(os.path.join(res.folder, "bundles", rec["trial"], "manifest.json")).read()


def test_sweep_html_has_the_pareto_plot(swept):
    _spec_path, res = swept
    page = open(res.html, encoding="utf-8").read()
    assert page.count("data:image/png;base64,") == 1 and "Pareto front: cpu" in page
    assert res.summary["groups"][0]["candidate"]["trial"][:10] in page


def test_sweep_html_renders_in_headless_chromium(swept, tmp_path):
    import subprocess

    import numpy as np

    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    if chromium is None:
        pytest.skip("chromium is not installed: `apt-get install -y chromium` (Debian; .ci/run installs it)")
    cv2 = pytest.importorskip("cv2")
    _spec_path, res = swept
    shot = tmp_path / "sweep.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1100,1600", f"file://{res.html}"],
                   capture_output=True, timeout=120)
    dom = subprocess.run([chromium, *flags, "--dump-dom", f"file://{res.html}"], capture_output=True, text=True,
                         timeout=120).stdout
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] >= 1000
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # the plot is drawn, not a blank page
    assert dom.count("data:image/png;base64,") == 1 and "recommended" in dom


def _lambda_model(path, source):
    import keras

    inp = keras.Input((8, 8, 1))
    x = keras.layers.Lambda(eval(source))(inp)  # noqa: S307 - the test's own lambda
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(10, activation="softmax")(x)
    keras.Model(inp, out).save(path)
    return path


def test_a_trial_that_crashes_its_worker_is_recorded(local_ray, work):
    from edgeship import sweep

    _lambda_model(work["root"] / "crasher.keras", CRASH_IN_WORKER)
    spec = _spec(work, "crash", models=[*work["models"], ("crasher", "crasher.keras", True)],
                 axes={"precision": ["fp32"]})
    res = sweep(spec)
    by_model = {r["model"]: r for r in res.records}
    assert by_model["digits"]["status"] == "done"
    bad = by_model["crasher"]
    assert bad["status"] == "failed" and bad["failed_stage"] == "convert"
    assert bad["error"]["kind"] == "crash" and "worker process died" in bad["error"]["reason"]
    assert res.counts["failed"] == 1 and res.summary["failed"][0]["trial"] == bad["id"]
    # recorded: a re-run does not run it again (unless asked)
    assert sweep(spec).counts["converted"] == 0


def test_a_typed_error_and_a_timeout_are_recorded(local_ray, work):
    from edgeship import sweep

    # the crashing model without allow_unsafe: the converter refuses it (UnsafeModelError): a result, not a crash
    _lambda_model(work["root"] / "unsafe.keras", CRASH_IN_WORKER)
    unsafe = _spec(work, "unsafe", models=[("unsafe", "unsafe.keras")], axes={"precision": ["fp32"]})
    res = sweep(unsafe)
    err = res.records[0]["error"]
    assert res.records[0]["status"] == "failed" and err["kind"] == "error" and err["type"] == "UnsafeModelError"
    again = sweep(unsafe, retry_failed=True)  # asked to: the failed trial runs again (and fails again)
    assert again.counts["skipped"] == 0 and again.counts["failed"] == 1
    # a conversion that never ends is cancelled at timeout_s and recorded
    _lambda_model(work["root"] / "sleeper.keras", SLEEP_IN_WORKER)
    res = sweep(_spec(work, "sleep", models=[("sleeper", "sleeper.keras", True)], axes={"precision": ["fp32"]},
                      sweep={"output": "sleep-out", "timeout_s": 5}))
    err = res.records[0]["error"]
    assert err["kind"] == "timeout" and "timeout_s" in err["reason"]
