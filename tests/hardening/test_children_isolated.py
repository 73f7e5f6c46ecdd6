"""Every Python child edgeship starts runs isolated (``python -I``), so code in the working directory never runs
(issue 10 item 3).

A downloaded model often sits beside other downloaded files. Each variant puts hostile code in the working
directory: a package ``edgeship/`` whose ``isolate`` fakes a passing probe and whose ``cli`` fakes bench
figures, a module ``edgeship.py``, a ``numpy.py``, ``sitecustomize.py``/``usercustomize.py``, and an
``onnxruntime/`` package; each writes a canary file when imported. Then ``probe_model`` /
``load(isolate=True)``, the CLI's bare-file probe (``edgeship run junk.onnx``) and ``edgeship bench --all``
run from that directory. Control: the same child started the old way (``python -m`` without ``-I``) does
import the hostile package, so the canary would see it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from _hostile import cli, tiny_onnx, typed_one_line

pytestmark = pytest.mark.hardening
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import edgeship.runtime as rt  # noqa: E402
from edgeship.errors import ModelFormatError  # noqa: E402
from edgeship.isolate import probe_model  # noqa: E402

CANARY_CODE = "open({canary!r}, 'a').write({tag!r} + '\\n')\n"
FAKE_PROBE = ("import sys, json\nprint('EDGESHIP-PROBE:' + json.dumps({'ok': True, 'backend': 'FAKE', 'inputs': [], "
              "'outputs': [], 'load_s': 0, 'run_s': 0, 'peak_rss_kb': 1}))\nsys.exit(0)\n")
FAKE_BENCH = ("import json\nprint(json.dumps({'backend': {'delegate': 'FAKE'}, 'init_ms': 0, 'first_ms': 0, 'p50_ms': 0, "
              "'p90_ms': 0, 'p99_ms': 0, 'mean_ms': 0, 'throughput_per_s': 1e9, 'peak_rss_bytes': 1}))\n")


def _variants(canary):
    def w(path, text):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)

    def pkg(d):
        w(os.path.join(d, "edgeship", "__init__.py"), CANARY_CODE.format(canary=canary, tag="edgeship/"))
        w(os.path.join(d, "edgeship", "isolate.py"), CANARY_CODE.format(canary=canary, tag="edgeship/isolate") + FAKE_PROBE)
        w(os.path.join(d, "edgeship", "cli", "__init__.py"), "")
        w(os.path.join(d, "edgeship", "cli", "__main__.py"), CANARY_CODE.format(canary=canary, tag="edgeship/cli") + FAKE_BENCH)
        w(os.path.join(d, "edgeship", "cli.py"), CANARY_CODE.format(canary=canary, tag="edgeship/cli.py") + FAKE_BENCH)

    def module(d):
        w(os.path.join(d, "edgeship.py"), CANARY_CODE.format(canary=canary, tag="edgeship.py"))

    def numpy_(d):
        w(os.path.join(d, "numpy.py"), CANARY_CODE.format(canary=canary, tag="numpy.py") + "raise SystemExit(0)\n")

    def site(d):
        w(os.path.join(d, "sitecustomize.py"), CANARY_CODE.format(canary=canary, tag="sitecustomize"))
        w(os.path.join(d, "usercustomize.py"), CANARY_CODE.format(canary=canary, tag="usercustomize"))

    def ort(d):
        w(os.path.join(d, "onnxruntime", "__init__.py"), CANARY_CODE.format(canary=canary, tag="onnxruntime/"))

    return {"edgeship/ package (fakes the probe and bench)": pkg, "edgeship.py": module, "numpy.py": numpy_,
            "sitecustomize/usercustomize": site, "onnxruntime/ package": ort}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("iso")
    model = tiny_onnx(d / "tiny.onnx")
    calib = d / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((32, 4, 4, 1)).astype(np.float32))
    rc, _, err, _ = cli("convert", model, "-o", d / "bundle", "--calib", calib, "--formats", "onnx", "--precision", "fp32")
    assert rc == 0, err[-2000:]
    return model, str(d / "bundle")


def test_hostile_code_in_the_working_directory_never_runs(work, tmp_path, monkeypatch, harden):
    model, bundle = work
    x = np.random.default_rng(1).random((1, 4, 4, 1)).astype(np.float32)
    with rt.load(model) as m:
        expected = m.run(x)["y"]
    results, ran = {}, 0
    for i, label in enumerate(_variants("").keys()):
        cwd = tmp_path / f"dl{i}"
        cwd.mkdir()
        canary = str(tmp_path / f"canary-{i}")
        _variants(canary)[label](str(cwd))
        junk = cwd / "junk.onnx"
        junk.write_bytes(b"\x08\x07" + os.urandom(300))
        monkeypatch.chdir(cwd)
        checks = []
        with pytest.raises(ModelFormatError):
            probe_model(str(junk))  # a faked probe would return {"ok": True}
        checks.append("probe refused junk")
        with rt.load(model, isolate=True) as m:
            np.testing.assert_array_equal(m.run(x)["y"], expected)
        checks.append("load(isolate=True)")
        rc, _, err, _ = cli("run", junk.name, cwd=cwd)
        assert typed_one_line(rc, err), err[-1500:]
        checks.append("CLI probe")
        rc, out, err, _ = cli("bench", bundle, "--all", "--runs", "3", "--warmup", "0", "--json", cwd=cwd)
        assert rc == 0, err[-1500:]
        rows = [r for r in json.loads(out)["combinations"] if not r.get("skipped")]
        assert rows and all(r.get("runs_on") != "FAKE" and r["p50_ms"] > 0 for r in rows), rows
        checks.append("bench --all")
        monkeypatch.chdir(tmp_path)
        hit = os.path.exists(canary)
        ran += hit
        results[label] = (not hit, checks)
    # control: without -I the hostile package is imported and fakes the probe
    cwd = tmp_path / "control"
    cwd.mkdir()
    _variants(str(tmp_path / "canary-control"))["edgeship/ package (fakes the probe and bench)"](str(cwd))
    (cwd / "junk.onnx").write_bytes(b"\x08\x07" + os.urandom(300))
    p = subprocess.run([sys.executable, "-m", "edgeship.isolate", str(cwd / "junk.onnx")], cwd=cwd,
                       capture_output=True, text=True, timeout=120)
    control_hit = os.path.exists(tmp_path / "canary-control") and "FAKE" in p.stdout
    harden("(m) hostile code in the working directory", tried=len(results) * 4, **{
        "host crashes": 0, "rejected (typed)": len(results) * 2, "accepted": len(results) * 2,
        "notes": f"payloads run in children: {ran} (probe, load(isolate=True), CLI probe, bench --all); "
                 f"control without -I: {'imported and faked the probe' if control_hit else 'not reproduced'}"})
    assert ran == 0, results
    assert control_hit, (p.stdout[-500:], p.stderr[-500:])
