"""TensorFlow's start-up noise kept away from a person's terminal.

``quiet_native()`` sets ``TF_CPP_MIN_LOG_LEVEL`` and absl's verbosity, and sends
file descriptor 2 (where TensorFlow's C++ code writes its oneDNN/CUDA/absl lines)
into a buffer for the duration of the block; the buffer is shown only when the
block fails. Progress pinned with :func:`edgeship.progress.pin_console` stays
visible. ``EDGESHIP_VERBOSE=1`` shows everything.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile


def quiet_logging() -> None:
    """TensorFlow's and absl's own log levels down (before and after their import)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        import absl.logging  # noqa: PLC0415

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:  # pragma: no cover - absl comes with TensorFlow
        pass


@contextlib.contextmanager
def quiet_native():
    """Native stderr (fd 2) into a buffer for the block; shown on stderr only if the block raises."""
    quiet_logging()
    if os.environ.get("EDGESHIP_VERBOSE") == "1":
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2
        yield
        return
    sink = tempfile.TemporaryFile(mode="w+b")
    os.dup2(sink.fileno(), 2)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if failed:
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            if text.strip():
                sys.stderr.write(text)
                sys.stderr.flush()
        sink.close()
        quiet_logging()  # absl may have been imported inside the block
