"""HDF5 files are checked before any loader opens them: every byte must live in the file.

HDF5 can make a dataset's bytes come from somewhere else: an *external
dataset* (the data is in a raw file named in the dataset creation property
list), a *virtual dataset* (the data is mapped from datasets in other files),
an *external link* (a group member that is an object in another file) or a
*soft link* whose target does not exist in the file. A Keras weights file built
that way copies any file the user can read into the converted model. This
module walks the file with h5py's low-level API (links are inspected with
``get_linkval`` / link info, never followed; no dataset is read) and refuses
all of them with :class:`~edgeship.errors.UnsafeModelError`.

``check_keras_zip_weights`` does the same for the ``*.h5`` members of a
``.keras`` zip: each is copied into a private temporary folder (bounded size),
checked there and deleted.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile

from edgeship.errors import EdgeshipError, ModelFormatError, UnsafeModelError

from .keras_safety import UNSAFE_HINT

MAX_MEMBER_BYTES = 8 << 30
MAX_OBJECTS = 1_000_000


def _h5py():
    from edgeship.errors import require  # noqa: PLC0415

    return require("h5py", "convert", "to check HDF5 weights")


def iter_hdf5_problems(path: str):
    """Yield ``(object path, problem)`` for every link or dataset whose bytes are not in the file."""
    h5py = _h5py()
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not a readable HDF5 file: {exc}") from None
    with f:
        seen: set = set()
        stack = ["/"]
        count = 0
        while stack:
            gpath = stack.pop()
            grp = f.get(gpath, getlink=False)
            if grp is None:
                continue
            gid = grp.id
            key = hash(gid)  # h5py hashes an object id by (file, object number): hard-link cycles end here
            if key in seen:
                continue
            seen.add(key)
            for raw in _member_names(gid):
                count += 1
                if count > MAX_OBJECTS:
                    yield gpath, f"more than {MAX_OBJECTS} objects"
                    return
                name = raw.decode("utf-8", "replace")
                child = (gpath.rstrip("/") + "/" + name)
                info = gid.links.get_info(raw)
                if info.type == h5py.h5l.TYPE_EXTERNAL:
                    target = gid.links.get_val(raw)
                    yield child, f"an external link to {target[0].decode('utf-8', 'replace')!r}"
                    continue
                if info.type == h5py.h5l.TYPE_SOFT:
                    target = gid.links.get_val(raw)
                    tname = target.decode("utf-8", "replace") if isinstance(target, bytes) else str(target)
                    if not _soft_target_ok(f, tname):
                        yield child, f"a soft link to {tname!r}, which is not an object in the file"
                    continue
                if info.type != h5py.h5l.TYPE_HARD:
                    yield child, f"a link of unknown type {info.type}"
                    continue
                obj = f.get(child, getlink=False)
                if isinstance(obj, h5py.Group):
                    stack.append(child)
                elif isinstance(obj, h5py.Dataset):
                    why = _dataset_problem(h5py, obj)
                    if why:
                        yield child, why


def _member_names(gid) -> list:
    names = []
    gid.links.iterate(lambda n: names.append(n) and None)
    return names


def _soft_target_ok(f, target: str, depth: int = 0) -> bool:
    """True if the absolute ``target`` names an object of this file through hard (or such soft) links only.

    Resolved one component at a time with ``getlink=True``, so no external link on the way
    is ever followed (h5py's own path lookup would open the other file).
    """
    import h5py  # noqa: PLC0415

    if not target.startswith("/") or depth > 16:
        return False  # relative soft links resolve against a group: Keras never writes them
    node = f["/"]
    for part in [p for p in target.split("/") if p]:
        if not isinstance(node, h5py.Group) or not node.id.links.exists(part.encode()):
            return False
        link = node.get(part, getlink=True)
        if isinstance(link, h5py.SoftLink):
            if not _soft_target_ok(f, link.path, depth + 1):
                return False
        elif not isinstance(link, h5py.HardLink):
            return False
        node = node.get(part)
    return True


def _dataset_problem(h5py, ds) -> str | None:
    dcpl = ds.id.get_create_plist()
    if dcpl.get_external_count() > 0:
        names = [dcpl.get_external(i)[0].decode("utf-8", "replace") for i in range(dcpl.get_external_count())]
        return f"an external dataset whose bytes are in {names[0]!r}"
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        srcs = [dcpl.get_virtual_filename(i) for i in range(dcpl.get_virtual_count())]
        return f"a virtual dataset mapped from {srcs[0] if srcs else '?'!r}"
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED, h5py.h5d.COMPACT):
        return f"a dataset with an unknown storage layout {layout}"
    return None


def check_hdf5(path: str, origin: str | None = None) -> None:
    """Raise :class:`UnsafeModelError` if any byte of the HDF5 file ``path`` comes from outside it.

    Raises:
        ModelFormatError: not a readable HDF5 file.
        UnsafeModelError: an external dataset, external link, virtual dataset or dangling soft link.
    """
    for where, why in iter_hdf5_problems(path):
        raise UnsafeModelError(
            f"refusing to load {origin or path}: HDF5 object {where!r} is {why}; a weights file may not take "
            f"bytes from other files; {UNSAFE_HINT}"
        )


def check_keras_zip_weights(path: str) -> None:
    """Check every ``.h5`` member of a ``.keras`` zip with :func:`check_hdf5`, in a private temp folder."""
    try:
        with zipfile.ZipFile(path) as z:
            members = [i for i in z.infolist() if i.filename.lower().endswith((".h5", ".hdf5"))]
            if not members:
                return
            tmp = tempfile.mkdtemp(prefix="edgeship-h5check-")
            try:
                for i, info in enumerate(members):
                    if info.file_size > MAX_MEMBER_BYTES:
                        raise ModelFormatError(f"{path}: {info.filename} declares {info.file_size} bytes")
                    dst = os.path.join(tmp, f"member{i}.h5")  # never the member's own name: no path from the zip
                    with z.open(info) as src, open(dst, "wb") as out:
                        copied = 0
                        while True:
                            chunk = src.read(1 << 20)
                            if not chunk:
                                break
                            copied += len(chunk)
                            if copied > MAX_MEMBER_BYTES:
                                raise ModelFormatError(f"{path}: {info.filename} inflates past its size")
                            out.write(chunk)
                    check_hdf5(dst, origin=f"{path} (member {info.filename})")
                    os.unlink(dst)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except EdgeshipError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError) as exc:
        raise ModelFormatError(f"{path} is not a readable .keras file: {exc}") from None
