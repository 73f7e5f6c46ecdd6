"""report.md + report.html: self-contained HTML with embedded PNG plots whose figures
match the manifest, and build_report() rebuilding both from a bundle alone (in a
subprocess where TensorFlow, Keras and ONNX cannot be imported).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from edgeship.converters import convert  # noqa: E402
from edgeship.converters.report import HTML_NAME, REPORT_NAME, build_report  # noqa: E402
from edgeship.errors import BundleError  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, digits, digits_cnn):
    """The session's digits CNN (tests/conftest.py) converted once; tests only read it (copy to change it)."""
    x, y = digits
    out = tmp_path_factory.mktemp("rep") / "digits"
    return convert(digits_cnn, out, calib=(x[1200:1400], y[1200:1400]), eval_data=(x[1400:], y[1400:]),
                   calib_count=100, layer_errors=True)


def _read(bundle, name):
    return open(os.path.join(bundle.bundle, name), encoding="utf-8").read()


def _pngs(page: str) -> list:
    return re.findall(r'<img[^>]+src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)


def test_html_is_self_contained_with_embedded_pngs(bundle):
    page = _read(bundle, HTML_NAME)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://|src=\"//|<script|<link", page)  # nothing fetched from elsewhere
    pngs = _pngs(page)
    assert len(pngs) >= 3  # size, accuracy, layer errors, latency
    for b64 in pngs:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    for title in ("Size per artifact", "Accuracy and agreement", "quantization error", "Latency"):
        assert title in page


def test_figures_match_the_manifest(bundle):
    man = json.loads(_read(bundle, "manifest.json"))
    art = man["artifacts"][0]
    val = man["validation"]["artifacts"][art["file"]]
    md, page = _read(bundle, REPORT_NAME), _read(bundle, HTML_NAME)
    for text in (md, page):
        assert f"| {art['bytes']} | {art['gzip_bytes']} |" in text or (
            f"<td>{art['bytes']}</td><td>{art['gzip_bytes']}</td>" in text)
        assert f"{100 * val['accuracy']:.1f}%" in text
        assert f"{man['calibration']['count']} samples shaped [8, 8, 1]" in text
    errs = man["validation"]["layer_errors"][art["file"]]
    assert errs and f"| {errs[0]['layer']} | {errs[0]['op']} |" in md
    # latency: measured here, says so and names the CPU count
    assert f"on this machine ({os.cpu_count()} CPUs" in md and re.search(r"\| model\.int8\.tflite \| [0-9.]+ \| [0-9.]+ \|", md)
    # calibration summary: the class histogram of calibration.npz
    assert "samples per class:" in md
    # the existing report content stays
    assert "top-1 agreement" in md and "KiB" in md and "## Settings" in md


def test_build_report_rebuilds_without_tensorflow(bundle, tmp_path, import_blocker):
    import shutil

    copy = str(tmp_path / "copy")  # the shared bundle stays as it is for the other tests
    shutil.copytree(bundle.bundle, copy)
    for name in (REPORT_NAME, HTML_NAME):
        os.remove(os.path.join(copy, name))
    blocked = ("tensorflow", "tf_keras", "tensorflow_model_optimization", "onnx", "tf2onnx", "keras")
    child = import_blocker(blocked) + textwrap.dedent("""
        import json, sys
        from edgeship.converters.report import build_report
        md, html = build_report(sys.argv[1])
        print(json.dumps([md, html, blocked_loaded()]))
    """)
    res = subprocess.run([sys.executable, "-c", child, copy], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    md_path, html_path, loaded = json.loads(res.stdout.strip().splitlines()[-1])
    assert loaded == []
    assert os.path.basename(md_path) == REPORT_NAME and os.path.isfile(html_path)
    assert os.path.dirname(md_path) == copy
    page = open(html_path, encoding="utf-8").read()
    assert len(_pngs(page)) >= 3 and "model.int8.tflite" in page
    md = open(md_path, encoding="utf-8").read()
    assert "## Latency" in md and "## Calibration set" in md


def test_build_report_in_process_and_errors(bundle, tmp_path):
    import shutil

    copy = str(tmp_path / "copy")  # rebuilding rewrites the reports: on a copy, not the shared bundle
    shutil.copytree(bundle.bundle, copy)
    md_path, html_path = build_report(copy, latency=False)
    assert "## Latency" not in open(md_path, encoding="utf-8").read()
    assert os.path.getsize(html_path) > 1000
    with pytest.raises(BundleError, match="manifest.json"):
        build_report(tmp_path)


def test_report_html_renders_in_headless_chromium(bundle, tmp_path):
    """report.html opens in a real browser, offline, and its plots render (not blank)."""
    import shutil

    chromium = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                    None)
    if chromium is None:
        pytest.skip("chromium is not installed: `apt-get install -y chromium` (Debian; .ci/run installs it)")
    cv2 = pytest.importorskip("cv2")
    html = os.path.join(bundle.bundle, HTML_NAME)
    shot = tmp_path / "report.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([chromium, *flags, f"--screenshot={shot}", "--window-size=1000,2400", f"file://{html}"],
                   capture_output=True, timeout=120)
    dom = subprocess.run([chromium, *flags, "--dump-dom", f"file://{html}"], capture_output=True, text=True,
                         timeout=120).stdout
    assert shot.exists(), "chromium wrote no screenshot"
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[0] >= 1000
    # plots are drawn: many distinct colours, not a blank or text-only page
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200
    # the browser saw every embedded plot and the manifest's figures
    assert dom.count("data:image/png;base64,") == len(_pngs(_read(bundle, HTML_NAME))) >= 2
    art = bundle.manifest["artifacts"][0]["file"]
    assert art in dom
