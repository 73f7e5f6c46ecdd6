"""Dependency floors carry the fixes for the CVEs SECURITY.md lists, and the installed versions meet them.

``FIXES`` is the table from SECURITY.md: package -> (version with the fix, CVEs).
The test checks that (1) every floor in pyproject.toml's extras is at least the
fixed version, so ``pip install edgeship[convert]`` cannot resolve to a
vulnerable release, and (2) the versions installed here meet those floors.
"""

from __future__ import annotations

import os
import re
from importlib import metadata

import pytest

try:
    import tomllib
except ImportError:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")

# package -> (first version with every fix, the CVEs it fixes). Keep in step with SECURITY.md.
FIXES = {
    "keras": ("3.15", [
        "CVE-2025-1550 (3.9: arbitrary module/function in config.json despite safe_mode)",
        "CVE-2025-8747 (3.11.0: safe_mode bypass via keras.utils.get_file gadget)",
        "CVE-2025-9906 (3.11.0: config calls keras.config.enable_unsafe_deserialization)",
        "CVE-2025-9905 (3.11.3: .h5 loading silently ignores safe_mode)",
        "CVE-2025-49655 (3.11.3: deserialization RCE in 3.11.0-3.11.2)",
        "CVE-2025-12060 (3.12.0: path traversal)",
        "CVE-2026-1462 (3.12.1/3.14.0: TFSMLayer bypasses safe_mode)",
        "CVE-2026-12570 (3.15.0: unbounded HDF5 dataset allocation, DoS)",
    ]),
    "onnx": ("1.17", [
        "CVE-2024-27318 (1.16.0: external_data path traversal)",
        "CVE-2024-27319 (1.16.0: out-of-bounds read in the external-data loader)",
        "CVE-2024-5187 (1.17.0: tar path traversal in download_model_with_test_data)",
    ]),
    "opencv-python-headless": ("4.12", [
        "CVE-2025-53644 (4.12.0: uninitialised pointer -> heap write on a crafted JPEG)",
    ]),
}


def _extras():
    with open(PYPROJECT, "rb") as fh:
        project = tomllib.load(fh)["project"]
    reqs = {}
    for extra, items in project["optional-dependencies"].items():
        for item in items:
            r = Requirement(item)
            if r.name.startswith("edgeship"):
                continue
            reqs.setdefault(r.name.lower(), []).append((extra, r))
    return reqs


def _floor(req: Requirement) -> Version | None:
    lows = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=", ">")]
    return max(lows) if lows else None


@pytest.mark.parametrize("package", sorted(FIXES))
def test_pyproject_floor_carries_the_cve_fixes(package):
    reqs = _extras().get(package)
    assert reqs, f"{package} is not in any extra of pyproject.toml"
    fixed = Version(FIXES[package][0])
    for extra, r in reqs:
        floor = _floor(r)
        assert floor is not None and floor >= fixed, (
            f"[{extra}] {r} allows versions before {fixed}, which miss: {'; '.join(FIXES[package][1])}")


@pytest.mark.parametrize("package", sorted(FIXES))
def test_installed_version_meets_the_floor(package):
    try:
        installed = Version(metadata.version(package))
    except metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed here")
    fixed = Version(FIXES[package][0])
    assert installed >= fixed, f"{package} {installed} is installed; {fixed} or later fixes {FIXES[package][1]}"
    for extra, r in _extras()[package]:
        assert r.specifier.contains(installed, prereleases=True), f"installed {package} {installed} violates [{extra}] {r}"


def test_security_md_lists_the_same_cves():
    path = os.path.join(os.path.dirname(__file__), "..", "SECURITY.md")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    for package, (fixed, cves) in FIXES.items():
        for c in cves:
            cve = re.match(r"CVE-\d+-\d+", c).group(0)
            assert cve in text, f"SECURITY.md does not mention {cve} ({package} >= {fixed})"
