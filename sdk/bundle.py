"""Bundle folders: atomic writing, hashing and reading.

A conversion builds the whole bundle in a hidden temporary folder beside the
target (same filesystem), fsyncs every file, and renames it into place. A crash
or Ctrl-C leaves at most a ``.<name>.tmp-*`` folder, which the next write to the
same target removes; never a half bundle at the target path. An existing bundle
is replaced only with ``force=True``, and then the old one is moved aside first
and deleted only after the new one is in place.
"""

from __future__ import annotations

import os
from typing import Iterator

# glob, gzip, shutil and tempfile are imported by the writer functions only: the
# runtime reads bundles at cold start on devices and must not pay for them.

from . import manifest as _manifest
from .errors import BundleError, BundleExistsError, IntegrityError

_TMP_MARK = ".tmp-"
_OLD_MARK = ".old-"


def _sha256():
    try:  # the built-in implementation: no OpenSSL load at a device's cold start
        import _sha256  # noqa: PLC0415  (Python <= 3.11)

        return _sha256.sha256()
    except ImportError:
        try:
            import _sha2  # noqa: PLC0415  (Python >= 3.12)

            return _sha2.sha256()
        except ImportError:
            import hashlib  # noqa: PLC0415

            return hashlib.sha256()


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    h = _sha256()
    with open(path, "rb") as fh:
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    h = _sha256()
    h.update(data)
    return h.hexdigest()


def gzip_size(path: str) -> int:
    """Bytes of ``path`` after gzip -9 (what a download or OTA update costs)."""
    import gzip  # noqa: PLC0415

    with open(path, "rb") as fh:
        return len(gzip.compress(fh.read(), compresslevel=9, mtime=0))


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def stale_temp_dirs(target: str) -> list[str]:
    """Leftover temp folders of earlier interrupted writes to ``target``."""
    import glob  # noqa: PLC0415

    target = os.path.abspath(target)
    parent, name = os.path.split(target)
    pattern = os.path.join(glob.escape(parent), f".{glob.escape(name)}{_TMP_MARK}*")
    pattern_old = os.path.join(glob.escape(parent), f".{glob.escape(name)}{_OLD_MARK}*")
    return sorted(glob.glob(pattern) + glob.glob(pattern_old))


class BundleWriter:
    """Context manager that builds a bundle in a temp folder and commits it atomically.

    Example::

        with BundleWriter("out/digits", force=False) as w:
            path = w.path("model.int8.tflite")   # write files under w.dir
            ...
            w.commit(manifest_dict)               # validates, fsyncs, renames

    Leaving the block without ``commit`` (an exception, Ctrl-C) removes the temp
    folder and leaves any existing bundle untouched.

    Raises:
        BundleExistsError: ``target`` exists and ``force`` is false.
        BundleError: ``target`` exists and is not a folder edgeship may replace.
    """

    def __init__(self, target: str, *, force: bool = False) -> None:
        self.target = os.path.abspath(os.fspath(target))
        self.force = force
        self.dir: str | None = None
        self.committed = False

    def check_target(self) -> None:
        if os.path.lexists(self.target):
            if not self.force:
                raise BundleExistsError(
                    f"{self.target} exists already; pass --force (force=True) to replace it"
                )
            if not os.path.isdir(self.target) or os.path.islink(self.target):
                raise BundleError(f"{self.target} exists and is not a bundle folder; remove it yourself")
            if os.listdir(self.target) and not os.path.isfile(
                os.path.join(self.target, _manifest.MANIFEST_NAME)
            ):
                raise BundleError(
                    f"{self.target} is a non-empty folder that is not an edgeship bundle; "
                    "refusing to replace it even with --force"
                )

    def __enter__(self) -> "BundleWriter":
        import shutil  # noqa: PLC0415
        import tempfile  # noqa: PLC0415

        self.check_target()
        parent, name = os.path.split(self.target)
        os.makedirs(parent or ".", exist_ok=True)
        stale = stale_temp_dirs(self.target)
        olds = [d for d in stale if _OLD_MARK in os.path.basename(d)]
        if olds and not os.path.lexists(self.target):
            # A crash between "move the old bundle aside" and "move the new one in" left
            # no bundle at the target: put the old one back before anything else.
            newest = max(olds, key=os.path.getmtime)
            os.rename(newest, self.target)
            stale.remove(newest)
            self.check_target()
        for d in stale:
            shutil.rmtree(d, ignore_errors=True)
        self.dir = tempfile.mkdtemp(prefix=f".{name}{_TMP_MARK}", dir=parent or ".")
        return self

    def path(self, filename: str) -> str:
        if self.dir is None:
            raise RuntimeError("BundleWriter used outside its with-block")
        if os.path.basename(filename) != filename or filename in ("", ".", ".."):
            raise BundleError(f"bundle file names must be plain names, got {filename!r}")
        return os.path.join(self.dir, filename)

    def file_info(self, filename: str) -> dict:
        p = self.path(filename)
        return {"sha256": sha256_file(p), "bytes": os.path.getsize(p), "gzip_bytes": gzip_size(p)}

    def commit(self, manifest: dict) -> str:
        """Validate ``manifest``, write it, check hashes, fsync and rename into place."""
        import shutil  # noqa: PLC0415
        import tempfile  # noqa: PLC0415

        assert self.dir is not None
        _manifest.validate(manifest, where="the manifest being written")
        for art in manifest["artifacts"]:
            p = self.path(art["file"])
            if not os.path.isfile(p):
                raise BundleError(f"manifest names {art['file']} but it was not written")
            if sha256_file(p) != art["sha256"]:
                raise IntegrityError(f"{art['file']} changed after it was hashed")
        with open(self.path(_manifest.MANIFEST_NAME), "w", encoding="utf-8") as fh:
            fh.write(_manifest.dumps(manifest))
        for name in os.listdir(self.dir):
            fp = os.path.join(self.dir, name)
            if os.path.isfile(fp):
                with open(fp, "rb+") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(self.dir)
        parent = os.path.dirname(self.target)
        old = None
        self.check_target()
        if os.path.lexists(self.target):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}{_OLD_MARK}", dir=parent)
            os.rmdir(old)
            os.rename(self.target, old)
        try:
            os.rename(self.dir, self.target)
        except BaseException:
            if old is not None and not os.path.exists(self.target):
                os.rename(old, self.target)
            raise
        _fsync_dir(parent)
        self.committed = True
        self.dir = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def __exit__(self, exc_type, exc, tb) -> None:
        import shutil  # noqa: PLC0415

        if self.dir is not None and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None


def is_bundle(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, _manifest.MANIFEST_NAME))


def verify_file(bundle_dir: str, artifact: dict) -> str:
    """Path of ``artifact`` inside ``bundle_dir`` after checking its size and sha256.

    Raises:
        IntegrityError: the file is missing or its hash differs from the manifest.
    """
    name = artifact["file"]
    path = os.path.join(bundle_dir, name)
    if os.path.basename(name) != name or not os.path.isfile(path) or os.path.islink(path):
        raise IntegrityError(f"{bundle_dir}: artifact {name!r} is missing or is not a regular file")
    size = os.path.getsize(path)
    if size != artifact["bytes"]:
        raise IntegrityError(
            f"{path} is {size} bytes but the manifest says {artifact['bytes']}: the file is truncated "
            "or was replaced; re-copy the bundle or re-convert"
        )
    digest = sha256_file(path)
    if digest != artifact["sha256"]:
        raise IntegrityError(
            f"{path} does not match its sha256 in the manifest (got {digest[:12]}..., expected "
            f"{artifact['sha256'][:12]}...): the file was modified; re-copy the bundle or re-convert"
        )
    return path


def iter_artifacts(manifest: dict) -> Iterator[dict]:
    yield from manifest.get("artifacts", [])
