"""Fast checks of the file-safety rules (issue 10 items 3, 4, 6, 7): what ``--force`` may replace,
the write lock, stale temp folders, bounded reading of arrays, trees and manifests, frozen views.

No engine is needed: bundles here hold small byte files that the writer hashes like any artifact.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
import time
import zipfile

import numpy as np
import pytest

from edgeship import bundle as B
from edgeship import manifest as M
from edgeship import safeio
from edgeship.calibration import load_samples
from edgeship.errors import (BundleError, BundleExistsError, BundleLockedError, CalibrationError, EdgeshipError,
                             IntegrityError, NotABundleError)

TENSOR = {"name": "x", "shape": [None, 4], "dtype": "float32", "quantization": None}


def manifest_for(w, files, **over):
    arts = [{"file": f, "format": "tflite", "precision": "fp32", "io": "float", "layout": "NHWC", "targets": ["cpu"],
             **w.file_info(f), "inputs": [TENSOR], "outputs": [TENSOR], "notes": []} for f in files]
    m = {"schema_version": 1, "name": "t", "created": "2026-01-01T00:00:00+00:00", "task": "other",
         "source": {"path": None, "sha256": None, "format": "in_memory"}, "artifacts": arts,
         "preprocessing": None, "labels": None, "calibration": None, "validation": {"artifacts": {}},
         "tools": {"edgeship": "test"}}
    m.update(over)
    return m


def write_bundle(target, *, force=True, extra=(), payload=b"model-bytes"):
    with B.BundleWriter(str(target), force=force) as w:
        with open(w.path("model.fp32.tflite"), "wb") as fh:
            fh.write(payload)
        for name in extra:
            with open(w.path(name), "wb") as fh:
                fh.write(b"x")
        return w.commit(manifest_for(w, ["model.fp32.tflite"]))


def tree_snapshot(root):
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            out[os.path.relpath(p, root)] = os.path.getsize(p) if os.path.isfile(p) and not os.path.islink(p) else None
    return out


# -- item 4: --force replaces only an edgeship bundle -----------------------------------------------


def _foreign_variants(tmp_path):
    """(name, builder) of folders that hold a manifest.json or look like a bundle but are not ours."""
    def webapp(d):
        d.mkdir()
        (d / "manifest.json").write_text(json.dumps({"name": "app", "start_url": "/"}))
        (d / "index.html").write_text("<html></html>")
        (d / "src").mkdir()
        (d / "src" / "app.js").write_text("1")

    def bundle_plus_file(d):
        write_bundle(d)
        (d / "notes.txt").write_text("mine")

    def bundle_plus_folder(d):
        write_bundle(d)
        (d / "data").mkdir()
        (d / "data" / "keep.bin").write_bytes(b"1")

    def bundle_plus_link(d):
        write_bundle(d)
        os.symlink("/etc", d / "calibration.npz")  # an allowed name that is a link

    def broken_manifest(d):
        d.mkdir()
        (d / "manifest.json").write_text("{not json")

    def no_manifest(d):
        d.mkdir()
        (d / "photo.jpg").write_bytes(b"\xff\xd8")

    def symlinked_folder(d):
        real = tmp_path / "real-target"
        write_bundle(real)
        os.symlink(real, d)

    def plain_file(d):
        d.write_text("a file")

    def deep_manifest(d):
        d.mkdir()
        (d / "manifest.json").write_text("[" * 100000 + "]" * 100000)

    return [("web app", webapp), ("bundle + stray file", bundle_plus_file), ("bundle + folder", bundle_plus_folder),
            ("allowed name is a link", bundle_plus_link), ("malformed manifest", broken_manifest),
            ("no manifest", no_manifest), ("link to a bundle", symlinked_folder), ("plain file", plain_file),
            ("manifest 100k deep", deep_manifest)]


def test_force_refuses_every_foreign_folder_and_touches_nothing(tmp_path):
    for i, (label, build) in enumerate(_foreign_variants(tmp_path)):
        target = tmp_path / f"t{i}"
        build(target)
        before = tree_snapshot(tmp_path)
        with pytest.raises(NotABundleError) as ei:
            write_bundle(target, force=True)
        assert "nothing was touched" in str(ei.value), label
        assert isinstance(ei.value, BundleExistsError) and isinstance(ei.value, EdgeshipError)
        after = tree_snapshot(tmp_path)
        for snap in (before, after):  # the lock file beside the target is the only new entry
            snap.pop(f".t{i}.lock", None)
        assert after == before, label


def test_force_replaces_a_real_bundle_and_an_empty_folder(tmp_path):
    target = tmp_path / "b"
    write_bundle(target, payload=b"one")
    write_bundle(target, force=True, extra=("report.md", "report.html", "calibration.npz"), payload=b"two")
    assert (target / "model.fp32.tflite").read_bytes() == b"two"
    write_bundle(target, force=True, payload=b"three")  # reports + calibration.npz are allowed extras
    assert sorted(os.listdir(target)) == ["manifest.json", "model.fp32.tflite"]
    with pytest.raises(BundleExistsError):
        write_bundle(target, force=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    write_bundle(empty, force=True)
    assert B.foreign_reason(str(empty)) is None
    assert B.stale_temp_dirs(str(target)) == []
    assert [n for n in os.listdir(tmp_path) if n.startswith(".") and not n.endswith(".lock")] == []


def test_lock_serialises_writers_and_times_out_clearly(tmp_path):
    target = tmp_path / "b"
    held = B.acquire_lock(str(target), timeout=1)
    said = []
    t0 = time.monotonic()
    with pytest.raises(BundleLockedError, match="another edgeship process is writing"):
        B.acquire_lock(str(target), timeout=0.3, message=said.append)
    assert said and "waiting for another process" in said[0] and time.monotonic() - t0 >= 0.3
    # a writer waits while the lock is held, then goes ahead once it is released
    done = []

    def writer():
        done.append(write_bundle(target, force=True))

    th = threading.Thread(target=writer)
    th.start()
    time.sleep(0.3)
    assert not done and not target.exists()
    held.close()
    th.join(10)
    assert done and (target / "manifest.json").is_file()


def test_stale_cleanup_spares_live_temp_folders_and_strangers(tmp_path):
    target = tmp_path / "b"
    live = tmp_path / f".b.tmp-{os.getppid()}-abcd1234"  # a live process (our parent) owns it
    dead_pid = 2 ** 22 + 12345
    dead = tmp_path / f".b.tmp-{dead_pid}-abcd1234"
    legacy = tmp_path / ".b.tmp-q1w2e3r4"
    for d in (live, dead, legacy):
        d.mkdir()
        (d / "model.fp32.tflite").write_bytes(b"1")
    decoy_target = tmp_path / "elsewhere"
    decoy_target.mkdir()
    (decoy_target / "keep").write_text("1")
    os.symlink(decoy_target, tmp_path / f".b.tmp-{dead_pid}-link0000")
    assert sorted(os.path.basename(p) for p in B.stale_temp_dirs(str(target))) == sorted([dead.name, legacy.name])
    write_bundle(target)
    assert live.is_dir() and not dead.exists() and not legacy.exists()
    assert (decoy_target / "keep").read_text() == "1"


# -- item 6: bounded reading ------------------------------------------------------------------------


def _npy_header_bytes(shape, dtype="<f4"):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@pytest.mark.parametrize("shape", [(10 ** 12, 8, 8, 1), (2 ** 40, 1), (1, 2 ** 62)])
def test_huge_npy_header_is_refused_before_allocation(tmp_path, shape):
    p = tmp_path / "huge.npy"
    p.write_bytes(_npy_header_bytes(shape) + b"\0" * 64)
    with pytest.raises(CalibrationError, match="memory budget|truncated or hostile"):
        safeio.load_npy(str(p), error=CalibrationError)
    with pytest.raises(CalibrationError):
        load_samples(str(p), input_shape=shape[1:])


def test_npz_members_are_bounded_and_only_sampled_rows_kept(tmp_path):
    p = tmp_path / "bomb.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:  # 64 MB of zeros, a few KB on disk
        with zf.open("x.npy", "w", force_zip64=True) as m:
            m.write(_npy_header_bytes((65536, 16, 16, 1)))
            for _ in range(64):
                m.write(b"\0" * (1 << 20))
    assert p.stat().st_size < 1 << 20
    with pytest.raises(CalibrationError, match="memory budget"):
        safeio.load_npz(str(p), ("x",), max_bytes=1 << 20, error=CalibrationError)
    s = load_samples(str(p), input_shape=(16, 16, 1), count=16, max_bytes=1 << 20)  # 16 rows fit in 1 MiB
    assert s.x.shape == (16, 16, 16, 1) and s.kind == "npz"
    # a member whose zip entry lies about its size: zipfile stops at the declared size
    liar = tmp_path / "liar.npz"
    data = _npy_header_bytes((100, 4)) + np.ones((100, 4), np.float32).tobytes()
    with zipfile.ZipFile(liar, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("x.npy", data)
    raw = bytearray(liar.read_bytes())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):  # shrink the declared uncompressed size everywhere
        at = raw.find(sig)
        off = at + (22 if sig == b"PK\x03\x04" else 24)
        raw[off:off + 4] = (200).to_bytes(4, "little")
    liar.write_bytes(bytes(raw))
    with pytest.raises(CalibrationError):
        safeio.load_npz(str(liar), ("x",), error=CalibrationError)


def test_sampled_rows_equal_the_full_read(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((300, 4, 4, 1)).astype(np.float32)
    y = rng.integers(0, 3, 300)
    np.save(tmp_path / "a.npy", x)
    np.savez_compressed(tmp_path / "a.npz", x=x, y=y)
    a = load_samples(str(tmp_path / "a.npy"), input_shape=(4, 4, 1), count=50, seed=3)
    b = load_samples(str(tmp_path / "a.npz"), input_shape=(4, 4, 1), count=50, seed=3)
    idx = np.sort(np.random.default_rng(3).choice(300, size=50, replace=False))
    np.testing.assert_array_equal(a.x, x[idx])
    np.testing.assert_array_equal(b.x, x[idx])
    np.testing.assert_array_equal(b.y, y[idx])
    with pytest.raises(CalibrationError, match="calib_max_bytes"):
        load_samples(str(tmp_path / "a.npy"), input_shape=(4, 4, 1), max_bytes=0)


def test_special_files_and_links_out_of_a_tree_are_refused(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(b"secret")
    cases = {"fifo": lambda d: os.mkfifo(d / "a.png"),
             "link out": lambda d: os.symlink(outside, d / "a.png"),
             "proc mem": lambda d: os.symlink("/proc/self/mem", d / "a.png"),
             "dev zero": lambda d: os.symlink("/dev/zero", d / "sub.png"),
             "dir link out": lambda d: os.symlink(tmp_path, d / "up"),
             "dangling": lambda d: os.symlink(d / "nowhere", d / "b.png")}
    if sys.platform.startswith("linux"):
        def sock(d):
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(d / "s.png"))
            s.close()
        cases["socket"] = sock
    for name, make in cases.items():
        d = tmp_path / name.replace(" ", "_")
        (d / "ok").mkdir(parents=True)
        make(d)
        with pytest.raises(CalibrationError, match="refusing|link|nothing"):
            safeio.tree_files(str(d), error=CalibrationError)
        with pytest.raises(IntegrityError):
            B.sha256_tree(str(d), error=IntegrityError)
    # a link that stays inside is fine, and is hashed like the file it names
    d = tmp_path / "inside"
    d.mkdir()
    (d / "a.bin").write_bytes(b"1")
    os.symlink(d / "a.bin", d / "b.bin")
    assert [r for r, _ in safeio.tree_files(str(d))] == ["a.bin", "b.bin"]
    fifo = tmp_path / "f.npy"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    with pytest.raises(CalibrationError, match="FIFO"):
        load_samples(str(fifo), input_shape=(4,))
    with pytest.raises(IntegrityError, match="FIFO"):
        B.sha256_file(str(fifo))
    assert time.monotonic() - t0 < 30  # a reader that opened the FIFO would block here forever


# -- item 7: manifests ------------------------------------------------------------------------------


def _write_manifest(tmp_path, text):
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text(text)
    return str(d)


def test_manifest_reading_is_bounded(tmp_path):
    for text in ("[" * 100000 + "]" * 100000, '{"a":' * 5000 + "1" + "}" * 5000, '{"x": NaN}', "\xff"):
        with pytest.raises(BundleError):
            M.read(_write_manifest(tmp_path, text))
    d = tmp_path / "fifo"
    d.mkdir()
    os.mkfifo(d / "manifest.json")
    with pytest.raises(BundleError, match="FIFO"):
        M.read(str(d))
    assert safeio.json_depth('{"a": "[[[[", "b": [[1]]}') == 3


def test_schema_bounds_preprocessing_and_calibration_file(tmp_path):
    with B.BundleWriter(str(tmp_path / "b")) as w:
        with open(w.path("model.fp32.tflite"), "wb") as fh:
            fh.write(b"1")
        good = manifest_for(w, ["model.fp32.tflite"])
    pre = {"size": [8, 8], "color": "rgb", "mean": [0.5, 0.5, 0.5], "std": [0.2]}
    assert M.validation_errors(dict(good, preprocessing=pre)) == []
    bad_pre = [{"color": "rgb"}, dict(pre, size=[2_000_000, 2_000_000]), dict(pre, size=[0, 8]),
               dict(pre, mean=[0.1, 0.2]), dict(pre, color="gray", std=[1, 1, 1]), dict(pre, std=[0.0]),
               dict(pre, mean=[]), dict(pre, size=[8])]
    for p in bad_pre:
        assert M.validation_errors(dict(good, preprocessing=p)), p
    for f in ("../../x.npz", "/etc/passwd", "..", ".hidden", "a/b.npz", "x\\..\\y", "a" * 300):
        cal = {"source": "s", "kind": "npz", "count": 1, "file": f}
        assert M.validation_errors(dict(good, calibration=cal)), f
        arts = [dict(good["artifacts"][0], file=f)]
        assert M.validation_errors(dict(good, artifacts=arts)), f
        with pytest.raises(BundleError, match="not a plain file name|missing|cannot be read"):
            B.member_path(str(tmp_path), f)


def test_frozen_views(tmp_path):
    target = write_bundle(tmp_path / "b")
    view = M.Manifest.read(target)
    art = view.artifact("model.fp32.tflite")
    assert art.format.value == "tflite" and art.precision.value == "fp32" and art.bytes == len(b"model-bytes")
    assert art.inputs[0] == M.TensorInfo("x", (None, 4), "float32") and not art.inputs[0].quantized
    assert view.raw["artifacts"][0]["file"] == "model.fp32.tflite" and view.calibration_file is None
    with pytest.raises(AttributeError):
        view.name = "other"
    with pytest.raises(TypeError):
        view.raw["name"] = "other"
    with pytest.raises(BundleError):
        view.artifact("nope")
    with pytest.raises(BundleError):
        M.Manifest.from_dict({"name": "x"})


def test_read_verified_hashes_the_bytes_it_returns(tmp_path):
    target = write_bundle(tmp_path / "b", payload=b"abc")
    art = M.read(target)["artifacts"][0]
    assert B.read_verified(target, art) == b"abc"
    p = os.path.join(target, art["file"])
    os.remove(p)
    os.symlink(os.path.join(target, "manifest.json"), p)
    with pytest.raises(IntegrityError):
        B.verify_file(target, art)


# -- item 3: children run isolated ---------------------------------------------------------------


def test_children_start_in_isolated_mode(monkeypatch):
    from edgeship.isolate import python_command

    assert python_command() == [sys.executable, "-I"]
    import subprocess

    out = subprocess.run(python_command() + ["-c", "import edgeship, sys; print(edgeship.__file__); print(sys.flags.isolated)"],
                         capture_output=True, text=True, timeout=120, cwd="/")
    path, flag = out.stdout.split()
    assert os.path.samefile(os.path.dirname(path), os.path.dirname(B.__file__)) and flag == "1"
    assert safeio.parse_bytes("2GiB") == 2 << 30 and safeio.parse_bytes("1e6") == 10 ** 6


def test_preprocess_spec_bounds_and_image_reads(tmp_path):
    from edgeship.errors import InputError
    from edgeship.preprocess import PreprocessSpec, read_image

    PreprocessSpec(size=(16384, 8), mean=(0.5, 0.5, 0.5), std=(0.2,))
    for kw in (dict(size=(2_000_000, 2_000_000)), dict(size=(8, 8), mean=(0.1, 0.2)),
               dict(size=(8, 8), color="gray", std=(1.0, 1.0, 1.0)), dict(size=(8, 8), std=(0.0,))):
        with pytest.raises(InputError):
            PreprocessSpec(**kw)
    fifo = tmp_path / "cam.png"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO|does not exist"):  # refused, never opened (it would block)
        read_image(str(fifo))


@pytest.mark.parametrize("pythonpath", [None, ".", f".{os.pathsep}{os.pathsep}/nonexistent"])
def test_children_ignore_the_working_directory_even_with_pythonpath(tmp_path, monkeypatch, pythonpath):
    import subprocess

    from edgeship.isolate import child_env, python_command

    (tmp_path / "edgeship").mkdir()
    (tmp_path / "edgeship" / "__init__.py").write_text(f"open({str(tmp_path / 'canary')!r}, 'w')\n")
    monkeypatch.chdir(tmp_path)
    if pythonpath is None:
        monkeypatch.delenv("PYTHONPATH", raising=False)
    else:
        monkeypatch.setenv("PYTHONPATH", pythonpath)
    out = subprocess.run(python_command() + ["-c", "import edgeship; print(edgeship.__file__)"], env=child_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "canary").exists()
    assert os.path.samefile(os.path.dirname(out.stdout.strip()), os.path.dirname(B.__file__))


def test_npz_directory_bounds(tmp_path):
    good = tmp_path / "g.npz"
    np.savez(good, x=np.ones((8, 4), np.float32))
    raw = bytearray(good.read_bytes())
    at = raw.rfind(b"PK\x05\x06")
    for field, value, word in ((10, 60000, "archive members"), (12, 0x7FFFFFF0, "zip directory")):
        bad = bytearray(raw)
        size = 2 if field == 10 else 4
        bad[at + field: at + field + size] = value.to_bytes(size, "little")
        p = tmp_path / f"bad{field}.npz"
        p.write_bytes(bytes(bad))
        with pytest.raises(CalibrationError, match=word):
            safeio.load_npz(str(p), ("x",), error=CalibrationError)
    assert safeio.load_npz(str(good), ("x",))["x"].shape == (8, 4)
