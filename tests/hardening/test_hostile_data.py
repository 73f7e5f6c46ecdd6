"""Hostile data files (issue 10 items 6 and 7): array bombs, lying headers, special files, links out, manifests.

* ``.npz``/``.npy``: a 1 GiB-of-zeros member deflated to about 1 MB, headers claiming 7 TB (C and Fortran
  order, in ``.npy`` and inside ``.npz``), a zip entry that lies about its inflated size, 5000 members,
  object arrays, truncated files, bad magic. Each is read by ``load_samples`` in a fresh isolated child
  whose own peak RSS (``VmHWM``) is recorded, and a subset goes through ``edgeship convert`` / ``run``.
* special files: a FIFO, a socket, ``/dev/zero`` and ``/proc/self/mem`` links and a link to a file outside,
  in a calibration image folder and in a SavedModel folder (``convert`` must end, exit 2, one line).
* manifests: nested 100k deep, NaN, preprocessing without ``size``, a ``mean`` of the wrong length, a
  ``size`` of 2e6 x 2e6, ``calibration.file = "../../x.npz"`` (``report`` traced with strace: the outside
  file is never opened), a 20 MB manifest, a FIFO manifest: ``inspect``/``report``/``run`` exit 2, one line.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from _hostile import child_peak_rss_kb, cli, tiny_onnx, typed_one_line
from _hutil import record

pytestmark = pytest.mark.hardening
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

GIB = 1 << 30
RSS_LIMIT_MB = 400  # a bomb may not take more than this in the reading process (numpy + edgeship ~ 60 MB)
STRACE = shutil.which("strace")


def _hdr(shape, descr="<f4", fortran=False):
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    return buf.getvalue()


def _zip(path, members, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, header, zeros, tail in members:
            with zf.open(name, "w", force_zip64=True) as m:
                m.write(header)
                left = zeros
                block = b"\0" * (8 << 20)
                while left > 0:
                    m.write(block[: min(left, len(block))])
                    left -= len(block)
                m.write(tail)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile-data")
    rows = GIB // 64  # rows of 4x4x1 float32
    f = {}
    f["npz 1 GiB zeros deflated (sampled rows)"] = _zip(d / "bomb.npz", [("x.npy", _hdr((rows, 4, 4, 1)), GIB, b"")])
    f["npz 1 GiB zeros, one huge sample"] = _zip(d / "bomb1.npz", [("x.npy", _hdr((4, GIB // 16)), GIB, b"")])
    tb7 = 7 * (1 << 40)
    f["npz header 7 TB"] = _zip(d / "tb7.npz", [("x.npy", _hdr((tb7 // 64, 4, 4, 1)), 4096, b"")])
    f["npz header 7 TB, Fortran order"] = _zip(d / "tb7f.npz", [("x.npy", _hdr((tb7 // 64, 4, 4, 1), fortran=True), 64, b"")])
    f["npz labels 7 TB"] = _zip(d / "tb7y.npz", [("x.npy", _hdr((16, 4, 4, 1)), 16 * 64, b""),
                                                  ("y.npy", _hdr((tb7 // 8,), "<i8"), 64, b"")])
    # an entry whose directory says 1 KiB inflated while 64 MiB of zeros follow
    liar = d / "liar.npz"
    _zip(liar, [("x.npy", _hdr((1 << 20, 4, 4, 1)), 64 << 20, b"")])
    raw = bytearray(liar.read_bytes())
    for sig, off in ((b"PK\x01\x02", 24),):
        at = raw.find(sig)
        if raw[at + off: at + off + 4] == b"\xff\xff\xff\xff":  # zip64: sizes in the extra field
            ex = raw.find(b"\x01\x00", at + 46)
            raw[ex + 4: ex + 12] = (1024).to_bytes(8, "little")
        else:
            raw[at + off: at + off + 4] = (1024).to_bytes(4, "little")
    liar.write_bytes(bytes(raw))
    f["npz member lies about its size"] = str(liar)
    many = d / "many.npz"
    with zipfile.ZipFile(many, "w", zipfile.ZIP_STORED) as zf:
        for i in range(5000):
            zf.writestr(f"m{i}.npy", b"")
    f["npz with 5000 members"] = str(many)
    obj = d / "obj.npz"
    np.savez(obj, x=np.array([object()] * 16, dtype=object))
    f["npz object array"] = str(obj)
    good = d / "good.npz"
    np.savez_compressed(good, x=np.random.default_rng(0).random((64, 4, 4, 1)).astype(np.float32))
    data = good.read_bytes()
    (d / "trunc.npz").write_bytes(data[: len(data) // 2])
    f["npz truncated"] = str(d / "trunc.npz")
    (d / "tb7.npy").write_bytes(_hdr((tb7 // 64, 4, 4, 1)) + b"\0" * 4096)
    f["npy header 7 TB"] = str(d / "tb7.npy")
    (d / "tb7f.npy").write_bytes(_hdr((tb7 // 64, 4, 4, 1), fortran=True) + b"\0" * 64)
    f["npy header 7 TB, Fortran order"] = str(d / "tb7f.npy")
    (d / "short.npy").write_bytes(_hdr((100, 4, 4, 1)) + b"\0" * 640)
    f["npy truncated"] = str(d / "short.npy")
    (d / "magic.npy").write_bytes(b"\x93NUMPX" + os.urandom(200))
    f["npy bad magic"] = str(d / "magic.npy")
    (d / "hdr.npy").write_bytes(b"\x93NUMPY\x02\x00" + (1 << 30).to_bytes(4, "little") + b"{" * 4096)
    f["npy header length 1 GiB"] = str(d / "hdr.npy")
    return d, f


_READ = """
import json, sys
from edgeship.calibration import load_samples
from edgeship.errors import EdgeshipError
try:
    s = load_samples(sys.argv[1], input_shape=(4, 4, 1), count=200)
    print(json.dumps({"outcome": "accepted", "n": len(s)}))
except EdgeshipError as e:
    print(json.dumps({"outcome": type(e).__name__, "message": str(e)[:300]}))
"""


def test_array_bombs_are_bounded_and_typed(files, harden):
    _, f = files
    base_kb, _ = child_peak_rss_kb("import edgeship.calibration\nprint('{}')")
    rows, worst = {}, 0
    for label, path in f.items():
        hwm, obj = child_peak_rss_kb(_READ, path)
        rows[label] = (obj.get("outcome"), hwm // 1024)
        worst = max(worst, hwm)
        assert obj.get("outcome") in ("accepted", "CalibrationError"), (label, obj)
        assert hwm // 1024 < RSS_LIMIT_MB, (label, hwm)
    # the only accepted bomb is the valid one (1 GiB of zero samples): 200 rows kept, not 1 GiB
    accepted = [k for k, (o, _) in rows.items() if o == "accepted"]
    assert accepted == ["npz 1 GiB zeros deflated (sampled rows)"], rows
    bomb_mb = rows["npz 1 GiB zeros deflated (sampled rows)"][1]
    tb7_mb = max(rows["npy header 7 TB"][1], rows["npz header 7 TB"][1])
    harden("(h) array bombs (.npy/.npz)", tried=len(f), **{
        "host crashes": 0, "rejected (typed)": len(f) - len(accepted), "accepted": len(accepted),
        "notes": f"peak RSS of the reading child: 1 GiB npz bomb {bomb_mb} MB, 7 TB header {tb7_mb} MB, worst "
                 f"{worst // 1024} MB (baseline import {base_kb // 1024} MB); tracebacks 0, hangs 0"})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile-model")
    np.save(d / "calib.npy", np.random.default_rng(0).random((64, 4, 4, 1)).astype(np.float32))
    return tiny_onnx(d / "tiny.onnx"), str(d / "calib.npy"), d


def test_bombs_through_the_cli(files, model, harden, tmp_path):
    _, f = files
    onnx_path, calib, _ = model
    picks = ["npz header 7 TB", "npy header 7 TB", "npz member lies about its size", "npz with 5000 members",
             "npz labels 7 TB", "npy truncated"]
    results = {}
    for i, label in enumerate(picks):
        rc, _, err, sec = cli("convert", onnx_path, "-o", tmp_path / f"o{i}", "--calib", f[label], "--formats", "onnx",
                              "--precision", "fp32")
        results[label] = (rc, typed_one_line(rc, err), sec, err.strip().splitlines()[-1:] if err else "")
    # the budget flag: the valid 1 GiB bomb, needing ~300 rows of 64 bytes, refused under 1 KiB
    rc, _, err, sec = cli("convert", onnx_path, "-o", tmp_path / "ob", "--calib", f["npz 1 GiB zeros deflated (sampled rows)"],
                          "--formats", "onnx", "--precision", "fp32", "--calib-max-bytes", "1KiB")
    results["--calib-max-bytes 1KiB"] = (rc, typed_one_line(rc, err) and "memory budget" in err, sec, err[-200:])
    # run with a 7 TB .npy input
    rc, out, err, sec = cli("convert", onnx_path, "-o", tmp_path / "good", "--calib", calib, "--formats", "onnx",
                            "--precision", "fp32")
    assert rc == 0, err[-2000:]
    rc, _, err, sec = cli("run", tmp_path / "good", f["npy header 7 TB"])
    results["run with a 7 TB .npy"] = (rc, typed_one_line(rc, err), sec, err[-200:])
    bad = {k: v for k, v in results.items() if not v[1]}
    harden("(h) array bombs (.npy/.npz)", tried=len(results), **{
        "rejected (typed)": len(results) - len(bad), "slowest (s)": max(v[2] for v in results.values()),
        "notes": f"through the CLI: exit 2 with one line {len(results) - len(bad)}/{len(results)}"})
    assert not bad, bad
    assert not any(os.path.exists(tmp_path / f"o{i}") for i in range(len(picks)))


def _png(path):
    import cv2  # noqa: PLC0415

    cv2.imwrite(str(path), (np.random.default_rng(abs(hash(str(path))) % 1000).random((4, 4)) * 255).astype(np.uint8))


def _special_cases(outside):
    def fifo(p):
        os.mkfifo(p)

    def sock(p):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()

    return {"FIFO": fifo, "socket": sock, "link to /proc/self/mem": lambda p: os.symlink("/proc/self/mem", p),
            "link to /dev/zero": lambda p: os.symlink("/dev/zero", p),
            "link to a file outside": lambda p: os.symlink(outside, p),
            "link to a folder outside": lambda p: os.symlink(os.path.dirname(outside), p)}


def test_special_files_in_a_calibration_folder(model, tmp_path, harden):
    pytest.importorskip("cv2")
    onnx_path, _, _ = model
    outside = tmp_path / "secret.png"
    _png(outside)
    results = {}
    for i, (label, make) in enumerate(_special_cases(str(outside)).items()):
        folder = tmp_path / f"imgs{i}"
        (folder / "a").mkdir(parents=True)
        (folder / "b").mkdir()
        for k in range(6):
            _png(folder / ("a" if k % 2 else "b") / f"{k}.png")
        make(folder / "b" / "zz.png")
        rc, _, err, sec = cli("convert", onnx_path, "-o", tmp_path / f"o{i}", "--calib", folder, "--formats", "onnx",
                              "--precision", "fp32", timeout=180)
        results[label] = (rc, typed_one_line(rc, err), sec, err.strip()[-200:])
    bad = {k: v for k, v in results.items() if not v[1]}
    harden("(i) special files and links out of a tree", tried=len(results), **{
        "host crashes": 0, "rejected (typed)": len(results) - len(bad), "accepted": len(bad),
        "slowest (s)": max(v[2] for v in results.values()),
        "notes": f"calibration folders: hangs {sum(v[0] == 'hang' for v in results.values())}"})
    assert not bad, bad


_SAVE = """
import sys, tensorflow as tf
class M(tf.Module):
    def __init__(self):
        self.w = tf.Variable(tf.ones((16, 3)))
    @tf.function(input_signature=[tf.TensorSpec([1, 4, 4, 1], tf.float32)])
    def __call__(self, x):
        return tf.nn.softmax(tf.reshape(x, (1, 16)) @ self.w)
m = M()
tf.saved_model.save(m, sys.argv[1], signatures=m.__call__)
"""


def test_special_files_in_a_saved_model(tmp_path, harden):
    pytest.importorskip("tensorflow")
    src = tmp_path / "sm"
    subprocess.run([sys.executable, "-I", "-c", _SAVE, str(src)], check=True, capture_output=True, timeout=300,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).random((32, 4, 4, 1)).astype(np.float32))
    results = {}
    places = ["", "variables", "assets"]
    for i, (label, make) in enumerate(_special_cases(str(outside)).items()):
        if label == "link to a folder outside" or label == "socket":
            place = "assets"
        else:
            place = places[i % len(places)]
        sm = tmp_path / f"sm{i}"
        shutil.copytree(src, sm, symlinks=True)
        os.makedirs(sm / place, exist_ok=True)
        make(sm / place / "extra.bin")
        rc, _, err, sec = cli("convert", sm, "-o", tmp_path / f"o{i}", "--calib", tmp_path / "calib.npy",
                              "--precision", "fp32", timeout=240)
        results[f"{label} in {place or 'the root'}"] = (rc, typed_one_line(rc, err), sec, err.strip()[-200:])
    bad = {k: v for k, v in results.items() if not v[1]}
    harden("(i) special files and links out of a tree", tried=len(results), **{
        "rejected (typed)": len(results) - len(bad), "accepted": len(bad),
        "slowest (s)": max(v[2] for v in results.values()),
        "notes": f"SavedModel tree hash: hangs {sum(v[0] == 'hang' for v in results.values())}"})
    assert not bad, bad


def _manifest_variants(good: dict):
    def pre(**kw):
        m = json.loads(json.dumps(good))
        m["preprocessing"] = dict(m.get("preprocessing") or {"size": [4, 4], "color": "gray"}, **kw)
        return json.dumps(m)

    def no_size():
        m = json.loads(json.dumps(good))
        m["preprocessing"] = {"color": "gray", "scale": 1.0}
        return json.dumps(m)

    def cal_file(name):
        m = json.loads(json.dumps(good))
        m["calibration"]["file"] = name
        return json.dumps(m)

    def nan():
        return json.dumps(good).replace('"count": ', '"count": NaN, "x": ', 1)

    big = dict(good, settings={"pad": "x" * (20 << 20)})
    return {
        "nested 100k deep": "[" * 100000 + "]" * 100000,
        "nested 100k deep inside settings": json.dumps(good)[:-1] + ', "settings": ' + "{\"a\":" * 100000 + "1" + "}" * 100001,
        "NaN": nan(),
        "preprocessing without size": no_size(),
        "mean of the wrong length": pre(mean=[0.1, 0.2], color="rgb"),
        "size 2e6 x 2e6": pre(size=[2_000_000, 2_000_000]),
        "std 0": pre(std=[0.0]),
        "calibration.file ../../x.npz": cal_file("../../x.npz"),
        "calibration.file absolute": cal_file(None) if False else cal_file("/tmp/x.npz"),
        "20 MB manifest": json.dumps(big),
    }


def test_hostile_manifests(model, tmp_path, harden):
    onnx_path, calib, _ = model
    good_dir = tmp_path / "good"
    rc, _, err, _ = cli("convert", onnx_path, "-o", good_dir, "--calib", calib, "--formats", "onnx", "--precision", "fp32")
    assert rc == 0, err[-2000:]
    good = json.loads((good_dir / "manifest.json").read_text())
    outside = tmp_path / "x.npz"
    np.savez(outside, x=np.full((8, 4, 4, 1), 123.0, np.float32))
    results = {}
    variants = _manifest_variants(good)
    for i, (label, text) in enumerate(variants.items()):
        b = tmp_path / "deep" / "er" / f"b{i}"
        shutil.copytree(good_dir, b)
        (b / "manifest.json").write_text(text)
        if "../../x.npz" in label:
            shutil.copy(outside, b.parent.parent / "x.npz")
        cmds = [("inspect", b), ("report", b), ("run", b, calib)]
        for cmd in cmds:
            rc, _, err, sec = cli(*cmd, timeout=120)
            results[f"{label} / {cmd[0]}"] = (rc, typed_one_line(rc, err), sec, err.strip()[-200:])
    # a FIFO manifest and a manifest that links to /dev/zero
    for label, make in (("FIFO manifest", lambda p: os.mkfifo(p)), ("manifest -> /dev/zero", lambda p: os.symlink("/dev/zero", p))):
        b = tmp_path / label.replace(" ", "_").replace("/", "_").replace(">", "")
        shutil.copytree(good_dir, b)
        os.remove(b / "manifest.json")
        make(b / "manifest.json")
        rc, _, err, sec = cli("inspect", b, timeout=120)
        results[f"{label} / inspect"] = (rc, typed_one_line(rc, err), sec, err.strip()[-200:])
    outside_opens = None
    if STRACE:
        b = tmp_path / "deep" / "er" / f"b{list(variants).index('calibration.file ../../x.npz')}"
        ino = os.stat(b.parent.parent / "x.npz").st_ino
        log = tmp_path / "report.strace"
        subprocess.run([STRACE, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(log), os.path.join(
            os.path.dirname(sys.executable), "edgeship"), "report", str(b)], capture_output=True, timeout=300)
        outside_opens = 0
        for line in log.read_text(errors="replace").splitlines():
            if '"' in line:
                p = line.split('"')[1]
                full = p if os.path.isabs(p) else os.path.join(b, p)
                try:
                    if os.stat(full).st_ino == ino and os.path.basename(full) == "x.npz":
                        outside_opens += 1
                except OSError:
                    pass
    bad = {k: v for k, v in results.items() if not v[1]}
    harden("(j) hostile manifests", tried=len(results), **{
        "host crashes": 0, "rejected (typed)": len(results) - len(bad), "accepted": len(bad),
        "slowest (s)": max(v[2] for v in results.values()),
        "notes": f"inspect/report/run: exit 2 with one line {len(results) - len(bad)}/{len(results)}; "
                 f"opens of ../../x.npz by report (strace): {outside_opens if outside_opens is not None else 'no strace'}"})
    assert not bad, bad
    assert not outside_opens
