"""ONNX external-data traversal through the CLI, with every file the processes open traced.

Each case is a model whose weights live in "external data" that points outside
its folder (absolute path, ``..``, nested ``a/../../``, a symlink as the last
and as a parent component, a hard link) or past the end of a file inside it.
``edgeship convert`` and ``edgeship run`` are run under ``strace -f`` (the CLI
and any child it starts); afterwards every path that was opened is
``stat``-ed and compared by inode with the secret file outside the folder.
Figure: exit code 2 for all, and 0 opens (so 0 bytes read) of the secret.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from _hutil import record

pytestmark = pytest.mark.hardening
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

STRACE = shutil.which("strace")


def _model(model_dir, location, offset=None, length=None):
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    w.data_location = TensorProto.EXTERNAL
    w.ClearField("raw_data")
    for k, v in (("location", location), ("offset", offset), ("length", length)):
        if v is not None:
            e = w.external_data.add()
            e.key, e.value = k, str(v)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Add", ["x", "w"], ["y"])], "ext", [x], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    os.makedirs(model_dir, exist_ok=True)
    p = os.path.join(model_dir, "model.onnx")
    with open(p, "wb") as fh:
        fh.write(m.SerializeToString())
    return p


def _cases(root, secret):
    """name -> model path; ``secret`` lives in ``root/outside``, models in ``root/<case>/``."""
    c = {}
    c["absolute"] = _model(root / "absolute", str(secret))
    c["dotdot"] = _model(root / "dotdot", "../outside/secret.bin")
    d = root / "nested"
    os.makedirs(d / "a")
    c["nested a/../../"] = _model(d, "a/../../outside/secret.bin")
    d = root / "symlink_last"
    os.makedirs(d)
    os.symlink(secret, d / "w.bin")
    c["symlink last component"] = _model(d, "w.bin")
    d = root / "symlink_parent"
    os.makedirs(d)
    os.symlink(secret.parent, d / "data")
    c["symlink parent component"] = _model(d, "data/secret.bin")
    d = root / "hardlink"
    os.makedirs(d)
    os.link(secret, d / "w.bin")
    c["hard link"] = _model(d, "w.bin")
    for name, off, ln in (("offset past end", 64, None), ("length past end", 0, 4096), ("offset+length past end", 8, 16)):
        d = root / name.replace(" ", "_").replace("+", "_")
        os.makedirs(d)
        (d / "w.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
        c[name] = _model(d, "w.bin", off, ln)
    return c


def _opens(log_path):
    paths = []
    rx = re.compile(r'open(?:at|at2)?\((?:AT_FDCWD|\d+), "([^"]+)"|open\("([^"]+)"')
    with open(log_path, errors="replace") as fh:
        for line in fh:
            m = rx.search(line)
            if m and "ENOENT" not in line:
                paths.append(m.group(1) or m.group(2))
    return paths


@pytest.mark.skipif(STRACE is None, reason="strace is not installed (needed to trace every open)")
def test_external_data_traversal_through_the_cli(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    secret_ino = (os.stat(secret).st_dev, os.stat(secret).st_ino)
    cases = _cases(tmp_path, secret)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 4), np.float32))
    results = {}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # positive control: the trace does see a read of the secret through a symlink
    ctl = tmp_path / "control.log"
    subprocess.run([STRACE, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(ctl), sys.executable, "-c",
                    f"open({str(tmp_path / 'symlink_parent' / 'data' / 'secret.bin')!r}, 'rb').read()"], check=True)
    assert any(os.stat(p).st_ino == secret_ino[1] for p in _opens(ctl) if os.path.exists(p)), "strace saw nothing"
    for name, model in cases.items():
        model_dir = os.path.dirname(model)
        for cmd in (["convert", model, "-o", str(tmp_path / "bundles" / name.replace(" ", "_")), "--calib", "random",
                     "--calib-count", "4"],
                    ["run", model, str(x)]):
            log = tmp_path / f"strace_{len(results)}.log"
            r = subprocess.run([STRACE, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(log),
                                sys.executable, "-m", "edgeship.cli", *cmd],
                               capture_output=True, timeout=300, env=env)
            outside_opens = []
            for p in _opens(log):
                full = p if os.path.isabs(p) else os.path.join(model_dir, p)
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) == secret_ino:
                    outside_opens.append(p)
            results[(name, cmd[0])] = (r.returncode, outside_opens, r.stderr.decode(errors="replace").strip()[-200:])
    bad_rc = {k: v[0] for k, v in results.items() if v[0] != 2}
    leaks = {k: v[1] for k, v in results.items() if v[1]}
    record("(c) ONNX external data (CLI)", **{
        "tried": len(results), "host crashes": sum(1 for v in results.values() if v[0] < 0),
        "rejected (typed)": sum(1 for v in results.values() if v[0] == 2), "accepted": len(bad_rc),
        "notes": f"opens of the secret outside the model folder: {sum(len(v) for v in leaks.values())} "
                 f"(0 bytes read); {len(cases)} cases x convert/run"})
    assert not bad_rc, {k: results[k] for k in bad_rc}
    assert not leaks, leaks
    assert not (tmp_path / "bundles").exists() or not any((tmp_path / "bundles").iterdir())
