"""Bundle folders: atomic writing, hashing and reading.

A conversion builds the whole bundle in a hidden temporary folder beside the
target (same filesystem), fsyncs every file, and renames it into place. A crash
or Ctrl-C leaves at most a ``.<name>.tmp-<pid>-*`` folder, which the next write to
the same target removes once that process is gone; never a half bundle at the
target path. An existing bundle is replaced only with ``force=True``, only if it
is an edgeship bundle (:func:`foreign_reason`), and then the old one is moved
aside first and deleted only after the new one is in place.

Writes to one target are serialised by an ``fcntl`` lock on ``.<name>.lock``
beside it (present only while held), from the temp folder's creation to the rename: a second writer
waits (saying so on stderr) up to ``EDGESHIP_LOCK_TIMEOUT`` seconds (default 600)
and then fails with :class:`~edgeship.errors.BundleLockedError`.
"""

from __future__ import annotations

import os
from typing import Iterator

# glob, gzip, shutil and tempfile are imported by the writer functions only: the
# runtime reads bundles at cold start on devices and must not pay for them.

from . import manifest as _manifest
from . import safeio
from .errors import BundleError, BundleExistsError, IntegrityError, NotABundleError
from .writelock import DEFAULT_LOCK_TIMEOUT, LOCK_MARK as _LOCK_MARK, WriteLock, acquire_lock, lock_path  # noqa: F401

_TMP_MARK = ".tmp-"
_OLD_MARK = ".old-"
REPORT_FILES = ("report.md", "report.html")
CALIBRATION_FILE = "calibration.npz"
_OPENSSL_FROM = 8 << 20  # bytes: see _sha256


def _sha256(size: int = 0):
    """A sha256 object for ``size`` bytes: OpenSSL's (``hashlib``) from 8 MiB on, the built-in one below.

    OpenSSL's is ~6x faster (2.4 vs 16 ms for 4 MB) but loading it costs 3.4 ms and 3.4 MB of
    resident memory, which a device's cold start of a small model (MobileNetV2 INT8: 3.9 MB, 60 MB
    budget) would spend for a 13 ms saving; a ResNet50 INT8 (25 MB) saves 85 ms with it."""
    if size >= _OPENSSL_FROM:
        import hashlib  # noqa: PLC0415

        return hashlib.sha256()
    try:
        import _sha256  # noqa: PLC0415  (Python <= 3.11)

        return _sha256.sha256()
    except ImportError:
        try:
            import _sha2  # noqa: PLC0415  (Python >= 3.12)

            return _sha2.sha256()
        except ImportError:
            import hashlib  # noqa: PLC0415

            return hashlib.sha256()


def sha256_file(path: str, chunk: int = 1 << 20, *, error: type = IntegrityError) -> str:
    """sha256 of a regular file (a FIFO, device or socket is refused with ``error``, never read)."""
    with safeio.open_regular(path, error=error) as fh:
        h = _sha256(os.fstat(fh.fileno()).st_size)
        while True:
            block = fh.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    h = _sha256(len(data))
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


def _owner_pid(dirname: str, mark: str) -> int | None:
    """The pid in ``.<name><mark><pid>-XXXXXXXX`` (None for names without one)."""
    rest = dirname.split(mark, 1)[-1]
    head, sep, _ = rest.partition("-")
    return int(head) if sep and head.isdigit() else None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


def stale_temp_dirs(target: str) -> list[str]:
    """Leftover temp folders of earlier interrupted writes to ``target``.

    Only real folders (not links) named like edgeship's own temp folders, and only
    those whose writer process is gone: a live run's temp folder is never listed.
    """
    import glob  # noqa: PLC0415

    target = os.path.abspath(target)
    parent, name = os.path.split(target)
    found = []
    for mark in (_TMP_MARK, _OLD_MARK):
        for d in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}{mark}*")):
            base = os.path.basename(d)
            if not os.path.isdir(d) or os.path.islink(d) or base == f".{name}{_LOCK_MARK}":
                continue
            if _alive(_owner_pid(base, mark)):
                continue
            found.append(d)
    return sorted(found)


def foreign_reason(path: str) -> str | None:
    """Why ``path`` is not a bundle ``force`` may replace, or ``None`` when it is one (or empty).

    A replaceable bundle is a real folder (not a link) whose ``manifest.json`` passes
    the schema and that holds nothing but regular files the manifest lists (its
    artifacts, its calibration file), ``calibration.npz`` and the reports.
    """
    import stat  # noqa: PLC0415

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"it is a {safeio.file_kind(st.st_mode)}, not a folder"
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        return f"it cannot be listed ({exc.strerror})"
    if not names:
        return None
    if _manifest.MANIFEST_NAME not in names:
        return f"it holds {names[0]!r} and no {_manifest.MANIFEST_NAME}"
    try:
        man = _manifest.read(path)
    except BundleError as exc:
        return f"its {_manifest.MANIFEST_NAME} is not an edgeship manifest ({str(exc)[:160]})"
    allowed = {_manifest.MANIFEST_NAME, CALIBRATION_FILE, *REPORT_FILES}
    allowed.update(a["file"] for a in man.get("artifacts", []))
    cal = (man.get("calibration") or {}).get("file")
    if cal:
        allowed.add(cal)
    for n in names:
        if n not in allowed:
            return f"it holds {n!r}, which its manifest does not list"
        try:
            mode = os.lstat(os.path.join(path, n)).st_mode
        except OSError as exc:
            return f"{n!r} cannot be read ({exc.strerror})"
        if not stat.S_ISREG(mode):
            return f"{n!r} is a {safeio.file_kind(mode)}, not a file edgeship wrote"
    return None


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

    def __init__(self, target: str, *, force: bool = False, lock_timeout: float | None = None) -> None:
        self.target = os.path.abspath(os.fspath(target))
        self.force = force
        self.lock_timeout = lock_timeout
        self.dir: str | None = None
        self.committed = False
        self._lock = None

    def check_target(self) -> None:
        """Raise unless ``target`` is absent, or ``force`` is set and it is an edgeship bundle.

        Raises:
            BundleExistsError: it exists and ``force`` is false.
            NotABundleError: it exists and is not a bundle edgeship wrote (nothing is touched).
        """
        if os.path.lexists(self.target):
            if not self.force:
                raise BundleExistsError(
                    f"{self.target} exists already; pass --force (force=True) to replace it"
                )
            why = foreign_reason(self.target)
            if why is not None:
                raise NotABundleError(
                    f"{self.target} is not an edgeship bundle ({why}); --force (force=True) replaces only a "
                    "bundle edgeship wrote, so nothing was touched: remove it yourself or choose another output"
                )

    def __enter__(self) -> "BundleWriter":
        import shutil  # noqa: PLC0415
        import tempfile  # noqa: PLC0415

        self.check_target()
        parent, name = os.path.split(self.target)
        os.makedirs(parent or ".", exist_ok=True)
        self._lock = acquire_lock(self.target, timeout=self.lock_timeout)
        try:
            self.check_target()  # again: another writer may have finished while this one waited
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
            self.dir = tempfile.mkdtemp(prefix=f".{name}{_TMP_MARK}{os.getpid()}-", dir=parent or ".")
        except BaseException:
            self._release()
            raise
        return self

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # removes the lock file, then closing the descriptor releases the flock
            self._lock = None

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
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(self.target)}{_OLD_MARK}{os.getpid()}-", dir=parent)
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

        try:
            if self.dir is not None and os.path.isdir(self.dir):
                shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
        finally:
            self._release()


def is_bundle(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, _manifest.MANIFEST_NAME))


def member_path(bundle_dir: str, name, *, what: str = "file") -> str:
    """``bundle_dir/name`` for a plain file name the manifest gives; anything that could leave the bundle is refused.

    Raises:
        BundleError: ``name`` is not a plain file name (a separator, ``..``, absolute) or
            the path is a link or not a regular file.
    """
    import stat  # noqa: PLC0415

    if not isinstance(name, str) or not name or name in (".", "..") or os.path.basename(name) != name \
            or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name):
        raise BundleError(f"{bundle_dir}: the manifest names {what} {name!r}, which is not a plain file name "
                          "inside the bundle; refusing to read it")
    path = os.path.join(bundle_dir, name)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir}: {what} {name!r} is missing") from None
    except OSError as exc:
        raise BundleError(f"{bundle_dir}: {what} {name!r} cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise BundleError(f"{bundle_dir}: {what} {name!r} is a {safeio.file_kind(mode)}, not a regular file; "
                          "refusing to read it")
    return path


def verify_file(bundle_dir: str, artifact: dict) -> str:
    """Path of ``artifact`` inside ``bundle_dir`` after checking its size and sha256.

    The file is opened once (no links followed, regular files only) and its size and
    hash are taken from that open file.

    Raises:
        IntegrityError: the file is missing, not a regular file, or its size or hash
            differs from the manifest.
    """
    read_verified(bundle_dir, artifact, keep=False)
    return os.path.join(bundle_dir, artifact["file"])


def read_verified(bundle_dir: str, artifact: dict, *, keep: bool = True) -> bytes | None:
    """The bytes of ``artifact`` after checking its size and sha256 on exactly those bytes.

    Hand these bytes to the engine (``model_content``, ``InferenceSession(bytes)``) and the
    hash covers what runs. ``keep=False`` only checks (returns ``None``).

    Raises:
        IntegrityError: as :func:`verify_file`.
    """
    name = artifact["file"]
    path = os.path.join(bundle_dir, name)
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise IntegrityError(f"{bundle_dir}: artifact {name!r} is missing or is not a regular file")
    try:
        fh = safeio.open_regular(path, error=IntegrityError, what="artifact", follow_links=False)
    except IntegrityError:
        raise IntegrityError(f"{bundle_dir}: artifact {name!r} is missing or is not a regular file") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size != artifact["bytes"]:
            raise IntegrityError(
                f"{path} is {size} bytes but the manifest says {artifact['bytes']}: the file is truncated "
                "or was replaced; re-copy the bundle or re-convert"
            )
        h = _sha256(size)
        data = None
        try:
            if keep:  # one buffer of the recorded size: the bytes that are hashed are the bytes handed on
                data = fh.read(size + 1)
                if len(data) != size:
                    raise IntegrityError(f"{path} changed size while it was read; re-copy the bundle or re-convert")
                h.update(data)
            else:
                while True:
                    block = fh.read(1 << 20)
                    if not block:
                        break
                    h.update(block)
        except OSError as exc:
            raise IntegrityError(f"{path} cannot be read: {exc.strerror or exc}") from None
    digest = h.hexdigest()
    if digest != artifact["sha256"]:
        raise IntegrityError(
            f"{path} does not match its sha256 in the manifest (got {digest[:12]}..., expected "
            f"{artifact['sha256'][:12]}...): the file was modified; re-copy the bundle or re-convert"
        )
    return data


def verify_calibration(bundle_dir: str, manifest: dict) -> str | None:
    """Path of the bundle's calibration file after checking its sha256 (``calibration.file_sha256``).

    ``None`` when the manifest names no calibration file. Bundles written before the
    hash was recorded are checked for location only.

    Raises:
        IntegrityError: the file differs from its recorded sha256.
        BundleError: the manifest names a file outside the bundle, a link or a special file.
    """
    cal = manifest.get("calibration") or {}
    name = cal.get("file")
    if not name:
        return None
    path = member_path(bundle_dir, name, what="calibration file")
    want = cal.get("file_sha256")
    if want and sha256_file(path) != want:
        raise IntegrityError(f"{path} does not match its sha256 in the manifest: the calibration samples were "
                             "modified; re-copy the bundle or re-convert")
    return path


def sha256_tree(folder: str, *, error: type = BundleError, what: str = "folder") -> str:
    """One sha256 over a folder tree: every regular file's relative path and hash, sorted.

    Links are not followed out of the folder, and FIFOs, sockets and devices are refused
    with ``error`` (they are never opened: a FIFO would block the hash forever).
    """
    h = _sha256()
    for rel, p in safeio.tree_files(folder, error=error, what=what):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
        h.update(sha256_file(p, error=error).encode())
    return h.hexdigest()


def iter_artifacts(manifest: dict) -> Iterator[dict]:
    yield from manifest.get("artifacts", [])
