"""``--force`` replaces only an edgeship bundle, and converts to one target are serialised (issue 10 item 4).

* Folders that hold a ``manifest.json`` but are not edgeship bundles (a web app, a browser extension, a
  dataset, a bundle with the user's notes or a subfolder added, a manifest naming ``../x``, a link to a
  bundle, a plain file, a 100k-deep manifest): ``convert -o DIR --force`` exits 2 with one line and the
  whole parent tree is byte-for-byte unchanged (files deleted outside the target: 0).
* Two ``convert --force`` runs to the same ``-o`` started 0.2 s apart: the second waits for the lock
  (and says so), both finish, no traceback; a live run's temp folder is never removed; with the lock
  held elsewhere and ``EDGESHIP_LOCK_TIMEOUT=1`` the run fails with one clear line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from _hostile import EDGESHIP, cli, tiny_onnx, typed_one_line
from _hutil import harden_n

pytestmark = pytest.mark.hardening
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edgeship import bundle as B  # noqa: E402
from edgeship import manifest as M  # noqa: E402


def snapshot(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = "link:" + os.readlink(p)
            elif os.path.isfile(p):
                out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
            else:
                out[os.path.relpath(p, root)] = "dir"
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("force")
    model = tiny_onnx(d / "tiny.onnx")
    calib = d / "calib.npy"
    np.save(calib, np.random.default_rng(0).random((64, 4, 4, 1)).astype(np.float32))
    good = d / "good"
    rc, _, err, _ = cli("convert", model, "-o", good, "--calib", calib, "--formats", "onnx", "--precision", "fp32")
    assert rc == 0, err[-2000:]
    return model, str(calib), str(good)


def _foreign(tmp, good):
    def webapp(t):
        t.mkdir()
        (t / "manifest.json").write_text(json.dumps({"name": "My app", "start_url": "/", "icons": []}))
        (t / "index.html").write_text("<html>app</html>")
        (t / "src").mkdir()
        (t / "src" / "main.js").write_text("console.log(1)")

    def extension(t):
        t.mkdir()
        (t / "manifest.json").write_text(json.dumps({"manifest_version": 3, "name": "ext", "version": "1"}))
        (t / "background.js").write_text("//")

    def dataset(t):
        t.mkdir()
        (t / "manifest.json").write_text(json.dumps({"files": ["a.csv"]}))
        (t / "a.csv").write_text("1,2\n")

    def bundle_plus_notes(t):
        shutil.copytree(good, t)
        (t / "my-notes.txt").write_text("do not lose")

    def bundle_plus_folder(t):
        shutil.copytree(good, t)
        (t / "runs").mkdir()
        (t / "runs" / "result.json").write_text("{}")

    def manifest_names_parent(t):
        shutil.copytree(good, t)
        m = json.loads((t / "manifest.json").read_text())
        m["artifacts"][0]["file"] = "../x"
        (t / "manifest.json").write_text(json.dumps(m))

    def link_to_bundle(t):
        real = t.parent / (t.name + "-real")
        shutil.copytree(good, real)
        os.symlink(real, t)

    def plain_file(t):
        t.write_text("just a file")

    def deep(t):
        t.mkdir()
        (t / "manifest.json").write_text("[" * 100000 + "]" * 100000)

    def report_is_a_link(t):
        shutil.copytree(good, t)
        os.remove(t / "report.md")
        os.symlink(tmp / "elsewhere.md", t / "report.md")

    (tmp / "elsewhere.md").write_text("keep")
    return {"web app": webapp, "browser extension": extension, "dataset": dataset,
            "bundle + user's notes": bundle_plus_notes, "bundle + subfolder": bundle_plus_folder,
            "manifest names ../x": manifest_names_parent, "link to a bundle": link_to_bundle,
            "plain file": plain_file, "manifest 100k deep": deep, "report.md is a link": report_is_a_link}


def test_force_refuses_foreign_folders(setup, tmp_path, harden):
    model, calib, good = setup
    cases = _foreign(tmp_path, good)
    results, deleted = {}, 0
    for i, (label, make) in enumerate(cases.items()):
        t = tmp_path / f"t{i}"
        make(t)
        before = snapshot(tmp_path)
        rc, _, err, sec = cli("convert", model, "-o", t, "--calib", calib, "--formats", "onnx", "--precision", "fp32",
                              "--force")
        after = snapshot(tmp_path)
        for snap in (before, after):
            snap.pop(f".t{i}.lock", None)
        lost = [k for k in before if k not in after or after[k] != before[k]]
        deleted += len(lost)
        results[label] = (rc, typed_one_line(rc, err) and "not an edgeship bundle" in err and after == before, sec,
                          err.strip()[-240:], lost[:3])
    # control: a real bundle is replaced
    t = tmp_path / "real"
    shutil.copytree(good, t)
    rc, _, err, _ = cli("convert", model, "-o", t, "--calib", calib, "--formats", "onnx", "--precision", "fp32", "--force")
    assert rc == 0, err[-2000:]
    assert M.read(str(t))["created"] >= M.read(good)["created"]
    bad = {k: v for k, v in results.items() if not v[1]}
    harden("(k) --force on foreign folders", tried=len(results) + 1, **{
        "host crashes": 0, "rejected (typed)": len(results) - len(bad), "accepted": 1 + len(bad),
        "slowest (s)": max(v[2] for v in results.values()),
        "notes": f"files deleted outside the target: {deleted}; a real bundle is replaced (control)"})
    assert not bad, bad
    assert deleted == 0


def test_two_converts_to_one_target(setup, tmp_path, harden):
    model, calib, _ = setup
    pairs = harden_n(3, 8)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", EDGESHIP_PROGRESS="0")
    outcomes = {"both finished": 0, "second waited (said so)": 0, "tracebacks": 0, "hangs": 0}
    for k in range(pairs):
        target = tmp_path / f"out{k}"
        args = [EDGESHIP, "convert", model, "-o", str(target), "--calib", calib, "--formats", "onnx",
                "--precision", "fp32", "--force"]
        a = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        time.sleep(0.2)
        b = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        try:
            ea, eb = a.communicate(timeout=600)[1], b.communicate(timeout=600)[1]
        except subprocess.TimeoutExpired:
            outcomes["hangs"] += 1
            a.kill(), b.kill()
            continue
        outcomes["tracebacks"] += ("Traceback" in ea) + ("Traceback" in eb)
        if a.returncode == 0 and b.returncode == 0:
            outcomes["both finished"] += 1
        outcomes["second waited (said so)"] += ("waiting for another process" in (ea + eb))
        assert a.returncode == 0 and b.returncode == 0, (ea[-1500:], eb[-1500:])
        M.read(str(target))
        assert B.stale_temp_dirs(str(target)) == []
        assert not [n for n in os.listdir(tmp_path) if n.startswith(f".out{k}.tmp-")]
    # a live run's temp folder (a live pid: this test process) is never removed; a dead one's is
    target = tmp_path / "spare"
    live = tmp_path / f".spare.tmp-{os.getpid()}-live0000"
    dead = tmp_path / f".spare.tmp-{2 ** 22 + 4321}-dead0000"
    for d in (live, dead):
        d.mkdir()
        (d / "model.fp32.onnx").write_bytes(b"partial")
    rc, _, err, _ = cli("convert", model, "-o", target, "--calib", calib, "--formats", "onnx", "--precision", "fp32")
    assert rc == 0, err[-2000:]
    assert live.is_dir() and not dead.exists()
    # the lock held elsewhere, a short timeout: one clear line, exit 2, nothing written
    held = B.acquire_lock(str(tmp_path / "locked"))
    try:
        rc, _, err, sec = cli("convert", model, "-o", tmp_path / "locked", "--calib", calib, "--formats", "onnx",
                              "--precision", "fp32", env={"EDGESHIP_LOCK_TIMEOUT": "1"})
    finally:
        held.close()
    assert typed_one_line(rc, err) and "another edgeship process is writing" in err, err[-1500:]
    assert not (tmp_path / "locked").exists()
    harden("(l) converts racing to one -o", tried=2 * pairs + 2, **{
        "host crashes": 0, "rejected (typed)": 1, "accepted": 2 * pairs + 1,
        "notes": f"pairs 0.2 s apart: both finished {outcomes['both finished']}/{pairs}, the second waited for the "
                 f"lock {outcomes['second waited (said so)']}, tracebacks {outcomes['tracebacks']}, hangs "
                 f"{outcomes['hangs']}; live temp folders deleted 0; lock timeout: exit 2, one line"})
    assert outcomes["tracebacks"] == 0 and outcomes["hangs"] == 0
