"""Shared by the hostile Keras / SavedModel / HDF5 tests: crafting files, watching files, running the CLI.

``FileWatch`` counts every open/read of the watched files by this process or
any other (Linux inotify, so C-level reads by TensorFlow or HDF5 count too).
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import time
import zipfile

IN_ACCESS, IN_MODIFY, IN_OPEN = 0x1, 0x2, 0x20


class FileWatch:
    """Count inotify open/access/modify events on some files (all of them are counted together)."""

    def __init__(self, *paths) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for p in paths:
            if self._libc.inotify_add_watch(self.fd, os.fsencode(p), IN_ACCESS | IN_OPEN | IN_MODIFY) < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {p}")

    def events(self) -> int:
        """Events since the last call."""
        n = 0
        time.sleep(0.05)
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return n
            off = 0
            while off + 16 <= len(buf):
                _wd, _mask, _cookie, ln = struct.unpack_from("iIII", buf, off)
                off += 16 + ln
                n += 1

    def close(self) -> None:
        os.close(self.fd)


def rewrite_keras(src, dst, mutate=None, members=None):
    """Copy a ``.keras`` zip, changing ``config.json`` with ``mutate(cfg)`` and replacing ``members``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json" and mutate is not None:
                cfg = json.loads(data)
                mutate(cfg)
                data = json.dumps(cfg).encode()
            if members and item.filename in members:
                data = members[item.filename]
            zout.writestr(item, data)
    return str(dst)


def run_convert(cli, capsys, path, out, *flags):
    """``(exit code, stderr)`` of ``edgeship convert`` run in this process."""
    rc = cli.main(["convert", str(path), "-o", str(out), "--calib", "random", "--calib-count", "4", *flags])
    cap = capsys.readouterr()
    return rc, cap.err


def one_line(err: str) -> bool:
    return len([ln for ln in err.strip().splitlines() if ln.strip()]) == 1


def tree_holds(folder, needle: bytes) -> bool:
    """True if any file under ``folder`` contains ``needle``."""
    if not os.path.exists(folder):
        return False
    for top, _dirs, files in os.walk(folder):
        for f in files:
            with open(os.path.join(top, f), "rb") as fh:
                if needle in fh.read():
                    return True
    return False
