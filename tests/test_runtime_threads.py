"""One Model shared by several threads gives the same results as one thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest

try:
    import _tflite_fixtures as F
except ImportError:  # tests/ imported as a package
    from tests import _tflite_fixtures as F

import edgeship.runtime as rt


@pytest.fixture(scope="module")
def fx():
    return F.models()


@pytest.mark.parametrize("kind", ["int8", "fixed_int8"])
def test_eight_threads_fifty_runs_equal_single_thread(fx, kind):
    x = F.digits(24)[0]
    # Each thread uses its own batch size (1, 2 or 3) so a dynamic-batch engine is resized
    # back and forth while other threads run: resizing must happen under the same lock.
    batches = [x[i * 3:i * 3 + 1 + i % 3] for i in range(8)]
    with rt.load(fx.path(kind), threads=1) as m:
        name = m.outputs[0].name
        expected = [m.run(b)[name] for b in batches]
        errors: list = []
        mismatches: list = []
        start = threading.Barrier(8)

        def work(i):
            try:
                start.wait()
                for _ in range(50):
                    got = m.run(batches[i])[name]
                    if not np.array_equal(got, expected[i]):
                        mismatches.append(i)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert not mismatches, f"{len(mismatches)} runs differ from the single-thread result"
        assert not any(t.is_alive() for t in threads)


def test_classify_from_threads(fx):
    x = F.digits(8)[0]
    imgs = [np.rint(s[:, :, 0] * 255).astype(np.uint8) for s in x]
    with rt.load(fx.path("uint8")) as m:
        expected = [m.classify(im, top_k=3) for im in imgs]
        results: dict = {}

        def work(i):
            results[i] = [m.classify(imgs[i], top_k=3) for _ in range(20)]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    for i in range(8):
        assert all(r == expected[i] for r in results[i])
