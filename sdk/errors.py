"""One exception tree for edgeship.

Every error a user can cause is an :class:`EdgeshipError`; each subclass also
inherits the matching built-in so that ``except ValueError`` keeps working.
The CLI turns an ``EdgeshipError`` into exit code 2 and one line on stderr;
anything else is an internal error (exit code 1).
"""

from __future__ import annotations


class EdgeshipError(Exception):
    """Base class of every error edgeship raises on purpose."""

    exit_code = 2


class UnsupportedModelError(EdgeshipError, ValueError):
    """The model file or object is of a kind edgeship cannot convert or run."""


class UnsafeModelError(EdgeshipError, PermissionError):
    """Loading the model would run code from the file; refused unless opted in."""


class ModelFormatError(EdgeshipError, ValueError):
    """A model file is corrupt, truncated or not what its extension says."""


class BundleError(EdgeshipError, ValueError):
    """A bundle folder or manifest is missing, malformed or does not match its files."""


class IntegrityError(BundleError):
    """A file's sha256 does not match the manifest."""


class BundleExistsError(EdgeshipError, FileExistsError):
    """The output bundle exists already and ``force`` was not given."""


class CalibrationError(EdgeshipError, ValueError):
    """Calibration or evaluation data is missing, too small or of the wrong shape."""


class InputError(EdgeshipError, ValueError):
    """Data passed to a model does not match its inputs (shape, dtype, names)."""


class ValidationFailedError(EdgeshipError, RuntimeError):
    """The converted artifact lost more accuracy than allowed (``max_drop``)."""


class BackendUnavailableError(EdgeshipError, RuntimeError):
    """No interpreter or execution provider can run this artifact here."""


class FallbackError(BackendUnavailableError):
    """``strict=True`` and the requested backend/delegate could not be used."""


class ModelNotFoundError(EdgeshipError, FileNotFoundError):
    """The model path given to the runtime or the converter does not exist."""


class ModelClosedError(EdgeshipError, ValueError):
    """The model was closed; load it again to run it."""


class PruneOptionError(EdgeshipError, ValueError):
    """A pruning option (sparsity, structure, epochs ...) is out of range."""


class MissingDependencyError(EdgeshipError, ImportError):
    """An optional dependency is not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        what = f" (needed {purpose})" if purpose else ""
        super().__init__(
            f"{package} is not installed{what}; install it with "
            f"`pip install \"edgeship[{extra}]\"`"
        )
        self.package = package
        self.extra = extra


def require(module: str, extra: str, purpose: str = ""):
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``extra``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(module.split(".")[0], extra, purpose) from exc


class UsageError(EdgeshipError, ValueError):
    """A command-line argument is malformed or missing (the CLI's argparse mistakes too)."""


class NotABundleError(BundleExistsError):
    """The output exists and is not a bundle edgeship wrote; even ``force`` does not replace it."""


class BundleLockedError(BundleError):
    """Another conversion holds the lock of the same output folder and did not finish in time."""


class SourceError(EdgeshipError, IOError):
    """A video source cannot be opened, or was lost and could not be reopened."""


class WebViewError(EdgeshipError, OSError):
    """The stream's web view cannot listen on the requested host and port."""


class SweepSpecError(InputError):
    """A sweep spec (TOML) is malformed: ``key`` names the offending key (``axes.precision``)."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class SweepClusterError(EdgeshipError, ConnectionError):
    """The Ray cluster of a sweep (``--address`` / ``RAY_ADDRESS``) cannot be reached or joined."""
