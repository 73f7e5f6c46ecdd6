"""ONNX external-data traversal through the CLI: the secret outside the model folder is never opened.

Each case is a model whose weights live in "external data" that points outside
its folder (absolute path, ``..``, nested ``a/../../``, a symlink as the last
and as a parent component, a hard link) or past the end of a file inside it.
``edgeship convert`` and ``edgeship run`` are run in a child process two ways:

* with an in-process audit hook (:func:`sys.addaudithook`, event ``open``)
  installed before edgeship is imported: every ``open()`` in the CLI's process is
  ``stat``-ed and compared by inode with the secret. It holds whatever the user
  (as root, file modes stop nothing), and it always runs;
* under ``strace -f`` (the CLI and any child it starts, C-level opens included),
  where strace is installed (``.ci/run`` installs it).

Each has a positive control (the same machinery does see an open of the secret).
Figure: exit code 2 for all, and 0 opens (so 0 bytes read) of the secret.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from _hutil import record
from _shared import build_external_data_model

pytestmark = pytest.mark.hardening
onnx = pytest.importorskip("onnx")

STRACE = shutil.which("strace")

# A Python "interpreter" for the CLI and every Python child it starts: it installs the audit hook,
# then runs the command line as python would (-c / -m / script; the flags edgeship passes its
# children, -I -P -s, are accepted). sys.executable points at it, so children come here too.
AUDIT_BOOT = textwrap.dedent("""
    import os, runpy, sys
    SECRET, LOG, sys.executable = (int(sys.argv[1]), int(sys.argv[2])), sys.argv[3], sys.argv[4]
    args = sys.argv[5:]
    fd = os.open(LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    busy = [False]

    def hook(event, a):
        if event != "open" or busy[0] or not a or a[0] is None or isinstance(a[0], int):
            return
        busy[0] = True
        try:
            st = os.stat(a[0])
            if (st.st_dev, st.st_ino) == SECRET:
                os.write(fd, (str(os.getpid()) + " " + os.fsdecode(a[0]) + "\\n").encode())
        except (OSError, TypeError, ValueError):
            pass
        finally:
            busy[0] = False

    sys.addaudithook(hook)
    while args and args[0] in ("-I", "-P", "-s", "-E", "-S", "-B", "-u"):
        args.pop(0)
    if args[0] == "-c":
        sys.argv = ["-c"] + args[2:]
        exec(compile(args[1], "<string>", "exec"), {"__name__": "__main__"})
    elif args[0] == "-m":
        sys.argv = [args[1]] + args[2:]
        runpy.run_module(args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = args
        runpy.run_path(args[0], run_name="__main__")
""")


def _audited_python(tmp_path, secret_id, log):
    """An executable that is python with the audit hook (writing opens of the secret to ``log``)."""
    boot = tmp_path / "audit_boot.py"
    boot.write_text(AUDIT_BOOT)
    wrapper = tmp_path / "audited-python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {boot} {secret_id[0]} {secret_id[1]} {log} {wrapper} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return str(wrapper)


def _model(model_dir, location, offset=None, length=None):
    return build_external_data_model(model_dir, location, offset=offset, length=length, shape=(1, 4))


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


def _setup(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    secret_id = (os.stat(secret).st_dev, os.stat(secret).st_ino)
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 4), np.float32))
    return secret, secret_id, _cases(tmp_path, secret), x


def _commands(tmp_path, name, model, x):
    return (["convert", model, "-o", str(tmp_path / "bundles" / name.replace(" ", "_")), "--calib", "random",
             "--calib-count", "4"],
            ["run", model, str(x)])


def _audited(tmp_path, secret_id, args, tag):
    """Run the CLI with ``args``, it and its Python children audited: (exit code, opens of the secret, stderr)."""
    log = tmp_path / f"audit_{tag}.log"
    python = _audited_python(tmp_path, secret_id, log)
    r = subprocess.run([python, "-m", "edgeship.cli", *args],
                       capture_output=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    opens = log.read_text().splitlines() if log.exists() else []
    return r.returncode, opens, r.stderr.decode(errors="replace").strip()[-200:]


def _check(tmp_path, results, cases, area):
    bad_rc = {k: v[0] for k, v in results.items() if v[0] != 2}
    leaks = {k: v[1] for k, v in results.items() if v[1]}
    record(area, **{
        "tried": len(results), "host crashes": sum(1 for v in results.values() if v[0] < 0),
        "rejected (typed)": sum(1 for v in results.values() if v[0] == 2), "accepted": len(bad_rc),
        "notes": f"opens of the secret outside the model folder: {sum(len(v) for v in leaks.values())} "
                 f"(0 bytes read); {len(cases)} cases x convert/run"})
    assert not bad_rc, {k: results[k] for k in bad_rc}
    assert not leaks, leaks
    assert not (tmp_path / "bundles").exists() or not any((tmp_path / "bundles").iterdir())


def test_external_data_traversal_through_the_cli_audited(tmp_path):
    """Every open() in the CLI's process and its Python children, audited in-process: holds as root too."""
    secret, secret_id, cases, x = _setup(tmp_path)
    # positive control: the same audited CLI, asked to run the secret itself as a model (a hard link
    # named .onnx), is seen opening it
    os.link(secret, tmp_path / "control.onnx")
    rc, opens, err = _audited(tmp_path, secret_id, ["run", str(tmp_path / "control.onnx"), str(x)], "control")
    os.remove(tmp_path / "control.onnx")
    assert rc == 2 and opens, ("the audit hook saw no open of the secret", rc, opens, err)
    results = {}
    for name, model in cases.items():
        for cmd in _commands(tmp_path, name, model, x):
            results[(name, cmd[0])] = _audited(tmp_path, secret_id, cmd, str(len(results)))
    _check(tmp_path, results, cases, "(c) ONNX external data (CLI, audit hook)")


@pytest.mark.skipif(STRACE is None, reason="strace is not installed (needed to trace every open; .ci/run installs it)")
def test_external_data_traversal_through_the_cli_straced(tmp_path):
    """Every open() by the CLI and any child it starts, C-level included, traced with strace."""
    secret, secret_ino, cases, x = _setup(tmp_path)
    results = {}
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    # positive control: the trace does see a read of the secret through a symlink
    ctl = tmp_path / "control.log"
    subprocess.run([STRACE, "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(ctl), sys.executable, "-c",
                    f"open({str(tmp_path / 'symlink_parent' / 'data' / 'secret.bin')!r}, 'rb').read()"], check=True)
    assert any(os.stat(p).st_ino == secret_ino[1] for p in _opens(ctl) if os.path.exists(p)), "strace saw nothing"
    for name, model in cases.items():
        model_dir = os.path.dirname(model)
        for cmd in _commands(tmp_path, name, model, x):
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
    _check(tmp_path, results, cases, "(c) ONNX external data (CLI, strace)")
