"""The sweep folder: one JSON record per trial, the bundles, written atomically.

Layout::

    <sweep>/trials/<id>.json     the record (status converted | done | failed)
    <sweep>/bundles/<id>/        the trial's bundle (manifest, artifacts, report)
    <sweep>/sweep.json           summary: candidates, Pareto fronts, recommendations
    <sweep>/sweep.md, sweep.html the table and the Pareto plots

Every file is written to a temporary name beside it, fsynced and renamed: a sweep
killed at any moment leaves whole records and whole bundles, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from edgeship.errors import InputError

from .work import unpack

__all__ = ["SCHEMA", "Store"]

SCHEMA = "edgeship.sweep.trial/1"


class Store:
    """The records and bundles of one sweep folder."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise InputError(f"the sweep output {self.root!r} exists and is not a folder")
        os.makedirs(os.path.join(self.root, "trials"), exist_ok=True)
        os.makedirs(os.path.join(self.root, "bundles"), exist_ok=True)

    def record_path(self, tid: str) -> str:
        return os.path.join(self.root, "trials", f"{tid}.json")

    def bundle_path(self, tid: str) -> str:
        return os.path.join(self.root, "bundles", tid)

    def load(self, tid: str) -> dict | None:
        """The record of ``tid``, or None when there is none (or it is not one of ours)."""
        try:
            with open(self.record_path(tid), encoding="utf-8") as fh:
                rec = json.load(fh)
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("schema") == SCHEMA and rec.get("id") == tid else None

    def write_json(self, path: str, obj) -> None:
        """``obj`` as JSON at ``path``, atomically."""
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(obj, fh, indent=2, sort_keys=True, allow_nan=False)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def write_text(self, name: str, text: str) -> str:
        path = os.path.join(self.root, name)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return path

    def save(self, rec: dict) -> None:
        self.write_json(self.record_path(rec["id"]), {**rec, "schema": SCHEMA})

    def put_bundle(self, tid: str, bundle_tar: bytes) -> str:
        """Extract a packed bundle to ``bundles/<tid>`` (replacing one there), atomically."""
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.join(self.root, "bundles"))
        try:
            unpack(bundle_tar, tmp)
            final = self.bundle_path(tid)
            if os.path.isdir(final):
                shutil.rmtree(final)
            os.replace(os.path.join(tmp, "bundle"), final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def has_bundle(self, tid: str) -> bool:
        return os.path.isfile(os.path.join(self.bundle_path(tid), "manifest.json"))
