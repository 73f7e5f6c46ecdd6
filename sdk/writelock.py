"""The write lock of a bundle target: an ``fcntl`` lock on ``.<name>.lock`` beside it.

:class:`~edgeship.bundle.BundleWriter` holds it from the temp folder's creation to
the rename, so two conversions to one output never interleave and a run never
removes another live run's temp folder. The lock file exists only while held: the
holder unlinks it before releasing, and a waiter that locked a file that is no
longer at the path retries on the new one.
"""

from __future__ import annotations

import os

from .errors import BundleError, BundleLockedError

DEFAULT_LOCK_TIMEOUT = 600.0
LOCK_MARK = ".lock"

__all__ = ["DEFAULT_LOCK_TIMEOUT", "LOCK_MARK", "WriteLock", "acquire_lock", "lock_path"]


def lock_path(target: str) -> str:
    """The lock file that serialises writes to ``target`` (``.<name>.lock`` beside it)."""
    parent, name = os.path.split(os.path.abspath(os.fspath(target)))
    return os.path.join(parent, f".{name}{LOCK_MARK}")


def _lock_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get("EDGESHIP_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT)))
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT


class WriteLock:
    """A held write lock; :meth:`close` removes the lock file and releases the lock."""

    def __init__(self, fh, path: str) -> None:
        self._fh, self.path = fh, path

    def close(self) -> None:
        if self._fh is None:
            return
        try:  # unlinked while still held: a waiter that opened the old file sees it is stale and retries
            os.unlink(self.path)
        except OSError:
            pass
        self._fh.close()
        self._fh = None

    def __enter__(self) -> "WriteLock":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def acquire_lock(target: str, *, timeout: float | None = None, message=None) -> WriteLock | None:
    """Hold the write lock of ``target``: returns a :class:`WriteLock` whose ``close()`` releases it.

    Waits up to ``timeout`` seconds (``EDGESHIP_LOCK_TIMEOUT``, default 600) while another
    process writes the same target; ``message`` (default: a line on stderr) is called
    once when waiting starts. The lock file exists only while a writer holds it.

    Raises:
        BundleLockedError: still locked after ``timeout``.
        BundleError: the lock file cannot be created (e.g. a read-only folder).
    """
    import time  # noqa: PLC0415

    try:
        import fcntl  # noqa: PLC0415
    except ImportError:  # pragma: no cover - Windows: no serialisation
        return None
    path = lock_path(target)
    timeout = _lock_timeout() if timeout is None else timeout
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0),
                         0o644)
        except OSError as exc:
            raise BundleError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
        fh = os.fdopen(fd, "r+b")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                same = os.stat(path).st_ino == os.fstat(fh.fileno()).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return WriteLock(fh, path)
            fh.close()  # the holder removed this file as it finished: take the new one
            continue
        except BlockingIOError:
            fh.close()
        except OSError as exc:  # pragma: no cover - a filesystem without locks
            fh.close()
            raise BundleError(f"cannot lock {path}: {exc.strerror or exc}") from None
        if time.monotonic() >= deadline:
            raise BundleLockedError(
                f"another edgeship process is writing {os.path.abspath(target)} (lock {path}) and did not finish "
                f"within {timeout:g} s; wait for it or choose another output (EDGESHIP_LOCK_TIMEOUT sets the wait)")
        if not said:
            said = True
            text = (f"edgeship: waiting for another process writing {os.path.abspath(target)} to finish "
                    f"(lock {os.path.basename(path)}, up to {timeout:g} s)")
            if message is not None:
                message(text)
            else:
                import sys  # noqa: PLC0415

                print(text, file=sys.stderr, flush=True)
        time.sleep(0.05)
