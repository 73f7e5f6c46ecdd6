"""``kill -9`` at random moments of ``edgeship convert``, and a full disk.

A first conversion writes a bundle at the target. Then N conversions with
``--force`` into the same target are each killed with SIGKILL at a random
moment (from interpreter start-up to just after a normal run's duration).
After each kill: the target is either the earlier bundle or a complete new one
(every artifact's sha256 verifies against its manifest), never a partial one.
Leftover temporary folders are counted, and the next completed conversion must
remove them. The full disk is a tmpfs smaller than the bundle (needs root and
``mount``; skipped with the reason otherwise): a typed error (exit 2) and
nothing at the target.
"""

from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from _hutil import harden_n, record

pytestmark = pytest.mark.hardening
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from edgeship import bundle as _bundle  # noqa: E402
from edgeship import manifest as _manifest  # noqa: E402
from edgeship.errors import EdgeshipError  # noqa: E402

N = harden_n(6, 20)


def _cli(*args, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "edgeship.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, start_new_session=True, **kw)


def _state(target):
    """'missing', 'partial' or the manifest's created+hash of a complete, verified bundle."""
    if not os.path.lexists(target):
        return "missing"
    try:
        man = _manifest.read(target)
        for art in man["artifacts"]:
            _bundle.verify_file(target, art)
        return man.get("content_hash") or man["created"], man
    except EdgeshipError:
        return "partial"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("crash")
    p = d / "tiny.keras"
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(4, activation="softmax")]).save(p)
    return str(p)


def test_kill_9_during_conversion(tmp_path, tiny_model):
    target = str(tmp_path / "out" / "bundle")
    args = [tiny_model, "-o", target, "--calib", "random", "--calib-count", "8", "--force"]
    t0 = time.perf_counter()
    p = _cli("convert", *args)
    _, err = p.communicate(timeout=600)
    full = time.perf_counter() - t0
    assert p.returncode == 0, err.decode()[-500:]
    first = _state(target)
    assert first not in ("missing", "partial")
    first_files = {a["file"]: a["sha256"] for a in first[1]["artifacts"]}
    rng = random.Random(7)
    outcomes = {"earlier bundle intact": 0, "new bundle complete": 0, "partial": 0, "missing": 0}
    leftovers_seen = 0
    parent, name = os.path.split(target)
    for i in range(N):
        p = _cli("convert", *args)
        if i % 2 == 0:  # anywhere in the run
            time.sleep(rng.uniform(0.3, full * 1.05))
        else:  # while the bundle is being written: once its temp folder exists, after 0-300 ms
            deadline = time.perf_counter() + full * 2
            while p.poll() is None and time.perf_counter() < deadline and \
                    not glob.glob(os.path.join(glob.escape(parent), f".{name}.tmp-*")):
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.3))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=60)
        st = _state(target)
        if st in ("partial", "missing"):
            outcomes[st] += 1
        else:
            same = {a["file"]: a["sha256"] for a in st[1]["artifacts"]} == first_files and \
                st[1]["created"] == first[1]["created"]
            outcomes["earlier bundle intact" if same else "new bundle complete"] += 1
        leftovers_seen += len(_bundle.stale_temp_dirs(target))
    # the next completed conversion cleans up
    p = _cli("convert", *args)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()[-500:]
    left_after = _bundle.stale_temp_dirs(target)
    record("(e) kill -9 during convert", **{
        "tried": N, "host crashes": 0,
        "slowest (s)": full,
        "notes": (f"partial bundles at target: {outcomes['partial']}; target missing: {outcomes['missing']}; "
                  f"earlier bundle intact: {outcomes['earlier bundle intact']}; new bundle complete: "
                  f"{outcomes['new bundle complete']}; temp folders left by kills: {leftovers_seen}, "
                  f"after the next run: {len(left_after)}; a full conversion takes {full:.1f} s")})
    assert outcomes["partial"] == 0 and outcomes["missing"] == 0, outcomes
    assert left_after == []


def _try_mount_tmpfs(path, size):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root and mount(8)"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if r.returncode != 0:
        return f"mount -t tmpfs failed: {r.stderr.decode().strip()[:120]}"
    return None


def test_full_disk(tmp_path, tiny_model):
    ref = tmp_path / "ref"
    p = _cli("convert", tiny_model, "-o", str(ref), "--calib", "random", "--calib-count", "8")
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err.decode()[-300:]
    size = sum(os.path.getsize(f) for f in glob.glob(str(ref / "*")))
    disk = tmp_path / "disk"
    disk.mkdir()
    limit = max(8192, size // 2)
    why = _try_mount_tmpfs(disk, limit)
    if why:
        record("(e) full disk", tried=0, notes=f"skipped: {why}")
        pytest.skip(why)
    try:
        target = disk / "bundle"
        p = _cli("convert", tiny_model, "-o", str(target), "--calib", "random", "--calib-count", "8")
        _, err = p.communicate(timeout=600)
        msg = err.decode().strip().splitlines()[-1:] or [""]
        leftovers = os.listdir(disk)
        record("(e) full disk", **{
            "tried": 1, "host crashes": int(p.returncode < 0), "rejected (typed)": int(p.returncode == 2),
            "accepted": int(p.returncode == 0),
            "notes": f"tmpfs {limit} B for a {size} B bundle: exit {p.returncode} ({msg[0][:100]}); "
                     f"left in the disk: {leftovers}"})
        assert p.returncode >= 0
        assert not target.exists()
        assert leftovers == [], leftovers
        assert p.returncode == 2, err.decode()[-800:]
        assert b"space" in err and b"Traceback" not in err
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
