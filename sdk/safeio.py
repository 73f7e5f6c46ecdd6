"""Reading files that come from someone else, within bounds.

Every file edgeship reads on a user's behalf (calibration arrays, images in a
folder, a model's folder tree, a bundle's files) goes through these helpers:

* :func:`open_regular` opens a path without blocking and refuses anything that is
  not a regular file (a FIFO would hang a reader forever, a device or
  ``/proc/self/mem`` is not data);
* :func:`tree_files` walks a folder without following links and refuses special
  files and symbolic links that leave the folder;
* :func:`load_npy` / :func:`load_npz` check the array headers against a memory
  budget *before* anything is allocated, read ``.npz`` members through
  ``zipfile`` streaming (the declared inflated size is checked, and zipfile stops
  at it), never unpickle, and can keep only the rows a caller samples;
* :func:`json_depth` bounds the nesting of a JSON text before ``json.loads``
  recurses into it.

Errors are the caller's typed class (``error=``), with the file named.
numpy is imported inside the array functions only (the runtime imports this
module at cold start through the bundle reader).
"""

from __future__ import annotations

import os
import stat
import struct
from typing import Callable, Sequence

from .errors import InputError

__all__ = ["DEFAULT_MAX_BYTES", "MAX_JSON_DEPTH", "MAX_NPZ_MEMBERS", "open_regular", "tree_files", "file_kind",
           "npy_nbytes", "load_npy", "load_npz", "npz_names", "json_depth", "parse_bytes", "byte_size"]

DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB of arrays from one file (``--calib-max-bytes``)
MAX_JSON_DEPTH = 128
MAX_NPZ_MEMBERS = 4096
MAX_NPZ_DIRECTORY = 16 << 20  # bytes of zip directory zipfile would parse into memory
_NPY_MAX_HEADER = 10000  # numpy's own default limit on the header text
_CHUNK = 1 << 20


def parse_bytes(text) -> int:
    """``"2GiB"``, ``"512M"``, ``"1e9"`` or an int as a number of bytes (CLI helper).

    Raises:
        InputError: not a positive size.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        s = str(text).strip().lower().replace(" ", "")
        mult = 1
        for suffix, m in (("kib", 1 << 10), ("mib", 1 << 20), ("gib", 1 << 30), ("tib", 1 << 40),
                          ("kb", 10 ** 3), ("mb", 10 ** 6), ("gb", 10 ** 9), ("tb", 10 ** 12),
                          ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("t", 1 << 40), ("b", 1)):
            if s.endswith(suffix):
                s, mult = s[: -len(suffix)], m
                break
        try:
            n = int(float(s) * mult)
        except (ValueError, OverflowError):
            raise InputError(f"{text!r} is not a size in bytes (e.g. 2GiB, 512MiB, 1000000)") from None
    if n < 1:
        raise InputError(f"a size in bytes must be positive, got {text!r}")
    return n


def byte_size(text: str) -> int:
    """argparse ``type=`` for a size flag (``--calib-max-bytes 512MiB``)."""
    import argparse  # noqa: PLC0415

    try:
        return parse_bytes(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def file_kind(mode: int) -> str:
    """``regular file``, ``folder``, ``FIFO``, ``socket``, ``device``, ``symbolic link``."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def open_regular(path, *, error: type = InputError, what: str = "file", follow_links: bool = True):
    """Open ``path`` for reading (binary) if, once open, it is a regular file.

    The open itself never blocks (``O_NONBLOCK``: a FIFO opens at once and is then
    refused), and the check is on the open descriptor, so the path cannot be swapped
    between the check and the read. ``follow_links=False`` also refuses a symbolic
    link at ``path`` (``O_NOFOLLOW``).

    Raises:
        error: missing, unreadable, or not a regular file (named in the message).
    """
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if not follow_links and os.path.islink(path):
            raise error(f"{what} {path!r} is a symbolic link; refusing to follow it") from None
        raise error(f"cannot open {what} {path!r}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path!r} is a {file_kind(st.st_mode)}, not a regular file; refusing to read it")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _inside(real: str, root_real: str) -> bool:
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def tree_files(root, *, error: type = InputError, what: str = "folder") -> list[tuple[str, str]]:
    """``[(relative path, path)]`` of every regular file under ``root``, sorted, links not followed.

    A symbolic link whose target stays inside ``root`` is listed when it points at a
    regular file (and skipped when it points at a folder: the folder is walked where it
    is). Refused with ``error``: a FIFO, socket or device anywhere in the tree, a link
    that leads outside ``root`` or nowhere.
    """
    root = os.fspath(root)
    try:
        st = os.stat(root)
    except OSError as exc:
        raise error(f"{what} {root!r} cannot be read: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {root!r} is not a folder")
    root_real = os.path.realpath(root)
    out: list[tuple[str, str]] = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            raise error(f"{what} {root!r}: cannot list {d!r}: {exc.strerror or exc}") from None
        subdirs = []
        for e in entries:
            p = e.path
            try:
                mode = e.stat(follow_symlinks=False).st_mode
            except OSError as exc:
                raise error(f"{what} {root!r}: cannot stat {p!r}: {exc.strerror or exc}") from None
            rel = os.path.relpath(p, root)
            if stat.S_ISLNK(mode):
                real = os.path.realpath(p)
                if not _inside(real, root_real):
                    raise error(f"{what} {root!r}: {rel!r} is a symbolic link that leads outside the folder "
                                f"(to {real!r}); refusing to read it")
                try:
                    tmode = os.stat(real).st_mode
                except OSError:
                    raise error(f"{what} {root!r}: {rel!r} is a symbolic link to nothing") from None
                if stat.S_ISREG(tmode):
                    out.append((rel, p))
                elif not stat.S_ISDIR(tmode):
                    raise error(f"{what} {root!r}: {rel!r} links to a {file_kind(tmode)}; refusing to read it")
            elif stat.S_ISDIR(mode):
                subdirs.append(p)
            elif stat.S_ISREG(mode):
                out.append((rel, p))
            else:
                raise error(f"{what} {root!r}: {rel!r} is a {file_kind(mode)}, not a regular file; "
                            "refusing to read it (a FIFO would block forever, a device is not data)")
        stack.extend(reversed(subdirs))  # depth first, sorted: the order of os.walk with sorted dirs
    return out


# -- .npy / .npz -----------------------------------------------------------------------


def npy_nbytes(shape: Sequence[int], dtype) -> int:
    n = int(dtype.itemsize)
    for d in shape:
        n *= int(d)
    return n


def _header(stream, where: str, error: type):
    import numpy as np  # noqa: PLC0415

    fmt = np.lib.format
    try:
        version = fmt.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(stream, max_header_size=_NPY_MAX_HEADER)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(stream, max_header_size=_NPY_MAX_HEADER)
        else:
            raise error(f"{where}: .npy format version {version[0]}.{version[1]} is not supported (1.0 and 2.0 are)")
    except (ValueError, EOFError, SyntaxError, TypeError, OverflowError, OSError) as exc:
        if isinstance(exc, error):
            raise
        raise error(f"cannot read {where} as a .npy array: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    if dtype.hasobject:
        raise error(f"cannot read {where}: it holds Python objects (dtype {dtype}); only numeric arrays are read "
                    "(no pickles)")
    if any(int(d) < 0 for d in shape):
        raise error(f"{where} declares a negative dimension {shape}")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _check_budget(nbytes: int, where: str, shape, dtype, max_bytes: int, error: type, flag: str) -> None:
    if nbytes > max_bytes:
        raise error(f"{where} declares an array of shape {list(shape)} {dtype} ({nbytes:,} bytes), more than the "
                    f"memory budget of {max_bytes:,} bytes ({flag}); refusing to allocate it")


def _readinto(stream, buf, where: str, error: type) -> None:
    mv = memoryview(buf).cast("B") if buf.nbytes else None
    pos, total = 0, buf.nbytes
    while pos < total:
        try:
            n = stream.readinto(mv[pos:pos + min(total - pos, 1 << 26)])
        except (OSError, EOFError, ValueError) as exc:
            raise error(f"{where}: reading the array data failed: {exc}") from None
        if not n:
            raise error(f"{where} is truncated: the header declares {total:,} bytes of data, the file has {pos:,}")
        pos += n


def _skip(stream, n: int, where: str, error: type, seekable: bool) -> None:
    if n <= 0:
        return
    if seekable:
        stream.seek(n, os.SEEK_CUR)
        return
    while n > 0:
        try:
            block = stream.read(min(n, _CHUNK))
        except (OSError, EOFError, ValueError) as exc:
            raise error(f"{where}: reading the array data failed: {exc}") from None
        if not block:
            raise error(f"{where} is truncated")
        n -= len(block)


def _read_array(stream, where: str, error: type, max_bytes: int, flag: str, size_left: Callable,
                select: Callable | None, seekable: bool):
    """Header, budget check, then the data (all rows, or the rows ``select(shape, dtype)`` returns)."""
    import numpy as np  # noqa: PLC0415

    shape, fortran, dtype = _header(stream, where, error)
    nbytes = npy_nbytes(shape, dtype)
    idx = select(shape, dtype) if select is not None else None
    left = size_left()
    if nbytes > left:
        raise error(f"{where} declares {nbytes:,} bytes of data (shape {list(shape)} {dtype}) but holds at most "
                    f"{left:,}: the file is truncated or hostile")
    if idx is None or fortran or not shape:
        _check_budget(nbytes, where, shape, dtype, max_bytes, error, flag)
        count = nbytes // dtype.itemsize if dtype.itemsize else 0
        arr = np.empty(count, dtype)
        _readinto(stream, arr, where, error)
        if fortran:
            return arr.reshape(shape[::-1]).transpose()
        return arr.reshape(shape)
    # keep only the selected rows (sorted, unique): memory is rows x row size, whatever the file declares
    idx = np.asarray(idx, np.int64)
    row_shape = shape[1:]
    row_bytes = npy_nbytes(row_shape, dtype)
    _check_budget(row_bytes * len(idx), where, (len(idx),) + tuple(row_shape), dtype, max_bytes, error, flag)
    out = np.empty((len(idx),) + tuple(row_shape), dtype)
    at = 0
    for k, i in enumerate(idx.tolist()):
        if not 0 <= i < shape[0] or i < at:
            raise error(f"{where}: row {i} selected out of order")  # pragma: no cover - caller bug
        _skip(stream, (i - at) * row_bytes, where, error, seekable)
        _readinto(stream, out[k], where, error)
        at = i + 1
    _skip(stream, (shape[0] - at) * row_bytes, where, error, seekable)  # to the end: zipfile checks the CRC there
    return out


def load_npy(path, *, max_bytes: int = DEFAULT_MAX_BYTES, error: type = InputError, select: Callable | None = None,
             flag: str = "--calib-max-bytes / calib_max_bytes"):
    """Read a ``.npy`` file within ``max_bytes``; ``select(shape, dtype)`` may return the row indices to keep.

    Raises:
        error: not a regular file, not a numeric ``.npy``, truncated, or declaring more
            than ``max_bytes`` (checked on the header, before any allocation).
    """
    where = repr(os.fspath(path))
    with open_regular(path, error=error, what="array file") as fh:
        size = os.fstat(fh.fileno()).st_size
        try:
            return _read_array(fh, where, error, max_bytes, flag, lambda: size - fh.tell(), select, True)
        except MemoryError:
            raise error(f"{where}: not enough memory to read the array (budget {max_bytes:,} bytes, {flag})") from None


def _zip_entries(fh, size: int) -> tuple[int, int] | None:
    """``(entries, central directory bytes)`` the zip's end record declares (None without one)."""
    tail_len = min(size, 22 + 65535)
    fh.seek(size - tail_len)
    tail = fh.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        fh.seek(0)
        return None
    entries, cd_size = struct.unpack("<HI", tail[at + 10: at + 16])
    if (entries == 0xFFFF or cd_size == 0xFFFFFFFF) and at >= 20 and tail[at - 20: at - 16] == b"PK\x06\x07":
        off = struct.unpack("<Q", tail[at - 12: at - 4])[0]
        if off + 56 <= size:
            fh.seek(off)
            rec = fh.read(56)
            if rec[:4] == b"PK\x06\x06":
                entries, cd_size = struct.unpack("<QQ", rec[32:48])
    fh.seek(0)
    return entries, cd_size


def _open_zip(fh, where: str, error: type):
    import zipfile  # noqa: PLC0415

    size = os.fstat(fh.fileno()).st_size
    declared = _zip_entries(fh, size)
    if declared is not None and declared[0] > MAX_NPZ_MEMBERS:
        raise error(f"{where} declares {declared[0]:,} archive members (more than {MAX_NPZ_MEMBERS}); "
                    "not a .npz edgeship reads")
    if declared is not None and declared[1] > MAX_NPZ_DIRECTORY:
        raise error(f"{where} declares a zip directory of {declared[1]:,} bytes (more than {MAX_NPZ_DIRECTORY:,}); "
                    "not a .npz edgeship reads")
    try:
        zf = zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
        raise error(f"cannot read {where} as a .npz archive: {exc}") from None
    if len(zf.infolist()) > MAX_NPZ_MEMBERS:
        raise error(f"{where} holds more than {MAX_NPZ_MEMBERS} archive members; not a .npz edgeship reads")
    return zf


def npz_names(path, *, error: type = InputError) -> list[str]:
    """Array names in a ``.npz`` (member names without ``.npy``), read from the zip directory only."""
    where = repr(os.fspath(path))
    with open_regular(path, error=error, what="array file") as fh:
        zf = _open_zip(fh, where, error)
        return [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]


def load_npz(path, names: Sequence[str], *, max_bytes: int = DEFAULT_MAX_BYTES, error: type = InputError,
             required: Sequence[str] = (), select: dict | None = None, flag: str = "--calib-max-bytes / calib_max_bytes") -> dict:
    """The arrays ``names`` of a ``.npz`` (those present), read member by member within ``max_bytes`` in total.

    Each member's declared inflated size (zip directory) and its ``.npy`` header are
    checked against the budget before reading; ``zipfile`` stops inflating at the
    declared size and checks the CRC. ``select`` maps a name to a ``select(shape, dtype)``
    callable as in :func:`load_npy`.

    Raises:
        error: not a regular file or a zip, a required name missing, a member over the
            budget, truncated or inconsistent with its declared size, object arrays.
    """
    import zipfile  # noqa: PLC0415

    where = repr(os.fspath(path))
    out: dict = {}
    with open_regular(path, error=error, what="array file") as fh:
        zf = _open_zip(fh, where, error)
        present = {n[:-4] if n.endswith(".npy") else n: n for n in zf.namelist()}
        missing = [n for n in required if n not in present]
        if missing:
            raise error(f"{where} has arrays {sorted(present)} but no {missing[0]!r}")
        used = 0
        for name in names:
            if name not in present:
                continue
            info = zf.getinfo(present[name])
            mwhere = f"{where} member {name!r}"
            try:
                with zf.open(info) as m:
                    arr = _read_array(m, mwhere, error, max_bytes - used, flag,
                                      lambda: info.file_size - m.tell(), (select or {}).get(name), False)
                    if m.read(1):
                        raise error(f"{mwhere} holds more data than its header declares")
            except (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError) as exc:
                if isinstance(exc, error):
                    raise
                raise error(f"{mwhere} cannot be read: {exc}") from None
            except MemoryError:
                raise error(f"{mwhere}: not enough memory to read the array (budget {max_bytes:,} bytes, "
                            f"{flag})") from None
            used += arr.nbytes
            out[name] = arr
    return out


_JSON_TOKENS = None


def json_depth(text: str, limit: int = MAX_JSON_DEPTH) -> int:
    """Deepest nesting of ``[``/``{`` in a JSON text (outside strings), counted without recursion.

    Stops counting once ``limit`` is passed (returns a number above it).
    """
    global _JSON_TOKENS
    if _JSON_TOKENS is None:
        import re  # noqa: PLC0415

        _JSON_TOKENS = re.compile(r'"(?:[^"\\]+|\\.)*"?|[\[\]{}]')
    depth = best = 0
    for m in _JSON_TOKENS.finditer(text):
        ch = m.group()
        if ch in "[{":
            depth += 1
            if depth > best:
                best = depth
                if best > limit:
                    return best
        elif ch in "]}":
            depth -= 1
    return best
