"""Hostile images in calibration folders and in ``edgeship run``: typed errors, bounded memory.

Cases: truncated JPEG and PNG, a decompression bomb (a ~100-byte PNG whose
IHDR, written by hand with struct/zlib, claims 65535 x 65535 RGBA pixels =
17 GB decoded), an SVG and a text file named ``.png``, an empty file, random
bytes named ``.jpg``. Every ``edgeship`` command runs as a child whose peak
RSS comes from ``wait4`` (the kernel's own account), and is compared with the
same command on a good image.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from _hutil import record

pytestmark = pytest.mark.hardening
cv2 = pytest.importorskip("cv2")
keras = pytest.importorskip("keras")

RSS_MARGIN_MB = 150  # a hostile image may cost at most this much more than a good one


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width=65535, height=65535) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    # a few rows of zeros (filter byte + pixels), compressed: tiny on disk
    idat = zlib.compress(b"\x00" * (1 + width * 4) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _hostile(folder):
    rng = np.random.default_rng(0)
    img = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    ok, jpg = cv2.imencode(".jpg", img)
    ok, png = cv2.imencode(".png", img)
    files = {
        "truncated.jpg": jpg.tobytes()[: len(jpg) // 3],
        "truncated.png": png.tobytes()[: len(png) // 2],
        "bomb_65535x65535.png": bomb_png(),
        "svg_named.png": b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" '
                         b'height="64"/></svg>',
        "text_named.png": b"this is not an image\n" * 10,
        "empty.jpg": b"",
        "random.jpg": rng.integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    }
    os.makedirs(folder, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)
    return files


# Linux carries a process's RSS high-water mark across fork+exec (exec_mmap keeps the old mm's
# peak in signal->maxrss), so a child forked straight from pytest (TensorFlow loaded, ~700 MB)
# would report pytest's peak. A small launcher forks the real command and reports its wait4 RSS.
_LAUNCH = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
sys.stderr.write("\\nEDGESHIP-RSS-KB=%d EXIT=%d\\n" % (usage.ru_maxrss, os.waitstatus_to_exitcode(status)))
"""


def _run(args, timeout=600):
    """(exit code, peak RSS MB, stderr) of ``python -m edgeship.cli *args``; RSS from wait4."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-S", "-c", _LAUNCH, sys.executable, "-m", "edgeship.cli", *args],
                       capture_output=True, env=env, timeout=timeout)
    err = r.stderr.decode(errors="replace")
    tail = err.rsplit("EDGESHIP-RSS-KB=", 1)
    rss_kb, code = tail[1].split()
    return int(code.split("=")[1]), int(rss_kb) / 1024, tail[0]


def test_hostile_images_in_calibration_and_run(tmp_path):
    model = tmp_path / "m.keras"
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D(),
                      keras.layers.Dense(3, activation="softmax")]).save(model)
    calib = tmp_path / "calib"
    bad = _hostile(calib)
    rng = np.random.default_rng(1)
    for i in range(12):
        cv2.imwrite(str(calib / f"good_{i}.png"), (rng.random((40, 40, 3)) * 255).astype(np.uint8))
    bundle = tmp_path / "bundle"
    rc, conv_rss, err = _run(["convert", str(model), "-o", str(bundle), "--calib", str(calib),
                              "--preprocess", "size=32x32,scale=1/255"])
    assert rc == 0, err[-800:]
    import json

    skipped_warning = "skipped" in err or "skipped" in json.dumps(json.load(open(bundle / "manifest.json")))
    # a folder of nothing but hostile files: a typed error, no bundle
    only_bad = tmp_path / "only_bad"
    _hostile(only_bad)
    rc_bad, bad_rss, err_bad = _run(["convert", str(model), "-o", str(tmp_path / "nob"), "--calib", str(only_bad),
                                     "--preprocess", "size=32x32,scale=1/255"])
    # edgeship run on each file, against a good image
    rc_good, good_rss, err_good = _run(["run", str(bundle), str(calib / "good_0.png")])
    assert rc_good == 0, err_good[-500:]
    runs = {}
    for name in bad:
        runs[name] = _run(["run", str(bundle), str(calib / name)])
    typed = sum(1 for rc, _, e in runs.values() if rc == 2 and "edgeship: error:" in e)
    worst = max(runs.items(), key=lambda kv: kv[1][1])
    record("(d) hostile images", **{
        "tried": len(bad) + 1 + len(runs), "host crashes": sum(1 for rc, _, _ in runs.values() if rc < 0),
        "rejected (typed)": typed + int(rc_bad == 2), "accepted": sum(1 for rc, _, _ in runs.values() if rc == 0),
        "notes": (f"calibration folder with {len(bad)} hostile + 12 good: exit {rc}, skipped with a warning: "
                  f"{skipped_warning}, peak RSS {conv_rss:.0f} MB; only hostile files: exit {rc_bad}; "
                  f"run peak RSS good image {good_rss:.0f} MB, worst hostile ({worst[0]}) {worst[1][1]:.0f} MB")})
    assert skipped_warning
    assert rc_bad == 2 and not (tmp_path / "nob").exists(), err_bad[-500:]
    for name, (rc, rss, e) in runs.items():
        assert rc >= 0, (name, rc, e[-300:])
        assert rss < good_rss + RSS_MARGIN_MB, (name, rss, good_rss)
        assert rc == 2, (name, rc, e[-300:])
    assert runs["bomb_65535x65535.png"][0] == 2
    assert runs["truncated.jpg"][0] == 2  # refused, not decoded partially
