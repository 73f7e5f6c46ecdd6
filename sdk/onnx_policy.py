"""The ONNX file policy: what an ``.onnx`` file may reference, checked without the ``onnx`` package.

numpy-free and engine-free: a small protobuf *wire-format* reader (no generated
classes, no native code) walks ModelProto -> graphs, functions, training graphs
-> nodes -> attributes -> tensors and sparse tensors, and collects every
``external_data`` reference and every op type (:func:`scan_model_bytes`).

Every external-data reference must name a plain file inside the model's folder
(:func:`check_external_location`): absolute paths, ``..`` components, symlinks
in any component below the folder, hard links, non-regular files, files that
resolve outside the folder, and offset/length past the end of the file are
refused with :class:`~edgeship.errors.UnsafeModelError`. The check only
``lstat``s paths below the folder; it never opens a referenced file.

:func:`read_external_data` then reads the referenced files *once*, each opened
component by component with ``O_NOFOLLOW`` relative to its parent folder, so the
bytes checked are the bytes an engine is given (the ONNX Runtime backend passes
them with ``add_external_initializers_from_files_in_memory``): a file swapped
after the check is never what runs.

Used by the ONNX Runtime backend (on the raw bytes) and by
:mod:`edgeship.converters.onnx_safety` (after parsing with ``onnx``).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from edgeship.errors import ModelFormatError, UnsafeModelError

__all__ = ["ExternalRef", "WireScan", "scan_model_bytes", "check_external_location", "check_refs",
           "read_checked_model", "read_external_data", "MAX_DEPTH"]

MAX_DEPTH = 64


@dataclass(frozen=True)
class ExternalRef:
    """One ``external_data`` reference of a tensor."""

    tensor: str
    location: str | None
    offset: int | None = None
    length: int | None = None
    external: bool = True  # data_location == EXTERNAL

    def __getitem__(self, key: str):  # dict-style access, as the converters' walk returns
        return getattr(self, key)


@dataclass
class WireScan:
    """What :func:`scan_model_bytes` found: external references, op types, whether a graph exists."""

    refs: list = field(default_factory=list)  # [ExternalRef]
    op_types: set = field(default_factory=set)
    quantized: set = field(default_factory=set)  # tensor names fed to QuantizeLinear / DynamicQuantizeLinear
    has_graph: bool = False


# -- protobuf wire format -------------------------------------------------------------------


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ModelFormatError("malformed protobuf: truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """Yield (field_number, wire_type, value) for one message; value is (s, e) for bytes."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise ModelFormatError("malformed protobuf: field number 0")
        if wt == 0:
            val, pos = _varint(buf, pos, end)
            yield num, wt, val
        elif wt == 1:
            pos += 8
            if pos > end:
                raise ModelFormatError("malformed protobuf: truncated fixed64")
        elif wt == 5:
            pos += 4
            if pos > end:
                raise ModelFormatError("malformed protobuf: truncated fixed32")
        elif wt == 2:
            ln, pos = _varint(buf, pos, end)
            if pos + ln > end:
                raise ModelFormatError("malformed protobuf: length-delimited field runs past its message")
            yield num, wt, (pos, pos + ln)
            pos += ln
        else:
            raise ModelFormatError(f"malformed protobuf: unsupported wire type {wt}")
    if pos != end:
        raise ModelFormatError("malformed protobuf: message overruns its end")


def _text(buf, span) -> str:
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ModelFormatError("malformed protobuf: string field is not UTF-8") from exc


class _Walker:
    def __init__(self, buf) -> None:
        self.buf = buf
        self.out = WireScan()

    # ModelProto: graph=7, training_info=20, functions=25
    def model(self, s: int, e: int) -> None:
        for f, wt, v in _fields(self.buf, s, e):
            if wt != 2:
                continue
            if f == 7:
                self.out.has_graph = True
                self.graph(*v, 1)
            elif f == 20:  # TrainingInfoProto: initialization=1, algorithm=2
                for f2, wt2, v2 in _fields(self.buf, *v):
                    if wt2 == 2 and f2 in (1, 2):
                        self.graph(*v2, 2)
            elif f == 25:  # FunctionProto: node=7, attribute_proto=11
                for f2, wt2, v2 in _fields(self.buf, *v):
                    if wt2 == 2 and f2 == 7:
                        self.node(*v2, 2)
                    elif wt2 == 2 and f2 == 11:
                        self.attribute(*v2, 2)

    # GraphProto: node=1, initializer=5, sparse_initializer=15
    def graph(self, s: int, e: int, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise ModelFormatError(f"model nests subgraphs more than {MAX_DEPTH} deep")
        for f, wt, v in _fields(self.buf, s, e):
            if wt != 2:
                continue
            if f == 1:
                self.node(*v, depth)
            elif f == 5:
                self.tensor(*v)
            elif f == 15:
                self.sparse(*v)

    # NodeProto: input=1, op_type=4, attribute=5
    def node(self, s: int, e: int, depth: int) -> None:
        op, first = "", None
        for f, wt, v in _fields(self.buf, s, e):
            if wt == 2 and f == 4:
                op = _text(self.buf, v)
                self.out.op_types.add(op)
            elif wt == 2 and f == 1 and first is None:
                first = _text(self.buf, v)
            elif wt == 2 and f == 5:
                self.attribute(*v, depth)
        if op in ("QuantizeLinear", "DynamicQuantizeLinear") and first:
            self.out.quantized.add(first)

    # AttributeProto: t=5, g=6, tensors=10, graphs=11, sparse_tensor=22, sparse_tensors=23
    def attribute(self, s: int, e: int, depth: int) -> None:
        for f, wt, v in _fields(self.buf, s, e):
            if wt != 2:
                continue
            if f in (5, 10):
                self.tensor(*v)
            elif f in (6, 11):
                self.graph(*v, depth + 1)
            elif f in (22, 23):
                self.sparse(*v)

    # SparseTensorProto: values=1, indices=2
    def sparse(self, s: int, e: int) -> None:
        for f, wt, v in _fields(self.buf, s, e):
            if wt == 2 and f in (1, 2):
                self.tensor(*v)

    # TensorProto: name=8, external_data=13 (key=1, value=2), data_location=14
    def tensor(self, s: int, e: int) -> None:
        name = ""
        entries: dict = {}
        external = False
        for f, wt, v in _fields(self.buf, s, e):
            if f == 8 and wt == 2:
                name = _text(self.buf, v)
            elif f == 14 and wt == 0:
                external = v == 1
            elif f == 13 and wt == 2:
                key = val = ""
                for f2, wt2, v2 in _fields(self.buf, *v):
                    if wt2 == 2 and f2 == 1:
                        key = _text(self.buf, v2)
                    elif wt2 == 2 and f2 == 2:
                        val = _text(self.buf, v2)
                if key in entries:
                    raise UnsafeModelError(f"tensor {name or '?'!r} repeats external_data key {key!r}")
                entries[key] = val
        if external or entries:
            self.out.refs.append(external_ref(name, entries, external))


def external_ref(tensor: str, entries: dict, external: bool = True) -> ExternalRef:
    """An :class:`ExternalRef` from a tensor's ``external_data`` key/value entries.

    Raises:
        ModelFormatError: ``offset``/``length`` is not an integer.
    """
    nums = {}
    for k in ("offset", "length"):
        nums[k] = None
        if entries.get(k, "") != "":
            try:
                nums[k] = int(entries[k])
            except ValueError as exc:
                raise ModelFormatError(f"tensor {tensor!r}: external_data {k}={entries[k]!r} is not an integer") \
                    from exc
    return ExternalRef(tensor, entries.get("location"), nums["offset"], nums["length"], external)


def scan_model_bytes(data) -> WireScan:
    """Walk a serialized ModelProto without the ``onnx`` package.

    Raises:
        ModelFormatError: the bytes are not a well-formed ModelProto.
        UnsafeModelError: a tensor repeats an external_data key.
    """
    buf = memoryview(data)
    walker = _Walker(buf)
    walker.model(0, len(buf))
    if not walker.out.has_graph:
        raise ModelFormatError("not an ONNX model: no graph in the protobuf")
    return walker.out


# -- external data: confined to the model folder --------------------------------------------


def _refuse(tensor: str, location, why: str) -> UnsafeModelError:
    return UnsafeModelError(
        f"tensor {tensor!r} has external data at {location!r}: {why}; refusing to load it "
        "(external data must be a plain file inside the model's folder)"
    )


def _parts(tensor: str, location) -> list:
    if location is None or location == "":
        raise ModelFormatError(f"tensor {tensor!r} is marked external but names no location")
    if "\x00" in location:
        raise _refuse(tensor, location, "the path contains a NUL byte")
    norm = location.replace("\\", "/")
    if norm.startswith("/") or os.path.isabs(location) or (len(norm) > 1 and norm[1] == ":") or norm.startswith("~"):
        raise _refuse(tensor, location, "absolute paths are not allowed")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise _refuse(tensor, location, "'..' components are not allowed")
    if not parts:
        raise _refuse(tensor, location, "the path names the model folder itself")
    return parts


def _check_span(tensor: str, location, size: int, offset, length) -> None:
    off = 0 if offset is None else offset
    if off < 0 or (length is not None and length < 0):
        raise _refuse(tensor, location, f"negative offset/length ({offset}, {length})")
    if off > size or (length is not None and off + length > size):
        raise _refuse(tensor, location, f"offset {off} + length {length} is past the end of the {size}-byte file")


def check_external_location(model_dir: str, tensor: str, location, offset=None, length=None) -> str:
    """Check one external-data reference and return the file it names.

    Only ``lstat``s components below ``model_dir``; never opens the file.

    Raises:
        UnsafeModelError: absolute path, ``..``, a symlink in any component, a hard
            link, not a regular file, outside the folder after ``realpath``,
            negative or past-the-end offset/length.
        ModelFormatError: no location, or the file does not exist.
    """
    parts = _parts(tensor, location)
    base = os.path.abspath(model_dir)
    cur = base
    st = None
    for i, part in enumerate(parts):
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError as exc:
            raise ModelFormatError(f"tensor {tensor!r}: external data file {location!r} does not exist in {base}") \
                from exc
        except OSError as exc:
            raise _refuse(tensor, location, f"cannot stat {part!r} ({exc.strerror})") from exc
        if stat.S_ISLNK(st.st_mode):
            which = "the file" if i == len(parts) - 1 else f"the parent folder {part!r}"
            raise _refuse(tensor, location, f"{which} is a symbolic link")
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            raise _refuse(tensor, location, f"{part!r} is not a folder")
    assert st is not None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(tensor, location, "it is not a regular file")
    if st.st_nlink > 1:
        raise _refuse(tensor, location, f"it is a hard link ({st.st_nlink} names for one file)")
    real_base = os.path.realpath(base)
    real = os.path.realpath(cur)
    if os.path.commonpath([real_base, real]) != real_base:
        raise _refuse(tensor, location, "it resolves outside the model folder")
    _check_span(tensor, location, st.st_size, offset, length)
    return real


def check_refs(model_path: str, refs: list) -> list:
    """Apply :func:`check_external_location` to every reference; returns the files."""
    model_dir = os.path.dirname(os.path.abspath(model_path))
    return [check_external_location(model_dir, r["tensor"], r["location"], r["offset"], r["length"]) for r in refs]


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted as a data file must not block the open


def _open_confined(model_dir: str, tensor: str, location) -> int:
    """An fd of the regular file ``location`` names below ``model_dir``, opened without following links."""
    parts = _parts(tensor, location)
    if not _NOFOLLOW or os.open not in os.supports_dir_fd:  # pragma: no cover - not POSIX
        check_external_location(model_dir, tensor, location)
        return os.open(os.path.join(model_dir, *parts), os.O_RDONLY | getattr(os, "O_BINARY", 0))
    fd = os.open(model_dir, os.O_RDONLY | _DIRECTORY)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | _NOFOLLOW | (_NONBLOCK if last else _DIRECTORY)
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError as exc:
                raise ModelFormatError(f"tensor {tensor!r}: external data file {location!r} does not exist in "
                                       f"{model_dir}") from exc
            except OSError as exc:  # ELOOP: a symlink; ENOTDIR: a file where a folder should be
                which = "the file" if last else f"the parent folder {part!r}"
                raise _refuse(tensor, location, f"{which} cannot be opened without following links "
                                                f"({exc.strerror})") from exc
            os.close(fd)
            fd = nxt
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(tensor, location, "it is not a regular file")
        if st.st_nlink > 1:
            raise _refuse(tensor, location, f"it is a hard link ({st.st_nlink} names for one file)")
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_external_data(model_path: str, refs: list) -> dict:
    """The bytes of every file ``refs`` name, read once: ``{location as written: bytes}``.

    Each file is opened component by component with ``O_NOFOLLOW`` below the
    model's folder and checked on the open descriptor (regular file, one link,
    offset/length inside it), so what is returned is what was checked.

    Raises:
        UnsafeModelError: a reference breaks the policy (see :func:`check_external_location`).
        ModelFormatError: a referenced file does not exist or cannot be read.
    """
    model_dir = os.path.dirname(os.path.abspath(model_path))
    out: dict = {}
    for r in refs:
        loc = r["location"]
        if loc in out:
            data = out[loc]
        else:
            fd = _open_confined(model_dir, r["tensor"], loc)
            try:
                with os.fdopen(fd, "rb", closefd=True) as fh:
                    data = fh.read()
            except OSError as exc:
                raise ModelFormatError(f"tensor {r['tensor']!r}: cannot read external data {loc!r} "
                                       f"({exc.strerror})") from exc
            out[loc] = data
        _check_span(r["tensor"], loc, len(data), r["offset"], r["length"])
    return out


def read_checked_model(path: str, data: bytes | None = None) -> tuple[bytes, WireScan]:
    """Read ``path`` (unless its ``data`` is given), scan its protobuf and check every external reference.

    Raises:
        ModelFormatError: not a readable, well-formed ONNX file.
        UnsafeModelError: an external-data reference breaks the policy.
    """
    if data is None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except IsADirectoryError as exc:
            raise ModelFormatError(f"{path} is a folder, not an .onnx file") from exc
        except OSError as exc:
            raise ModelFormatError(f"cannot read {path}: {exc.strerror}") from exc
    if not data:
        raise ModelFormatError(f"{path} is empty")
    try:
        scan = scan_model_bytes(data)
    except ModelFormatError as exc:
        raise ModelFormatError(f"{path} is not a valid ONNX model ({exc})") from None
    check_refs(path, scan.refs)
    return data, scan
