"""Model.run's buffers: returned arrays are the caller's (never overwritten by the next call) unless passed back
as ``out=``; ``out=`` writes the same values into the caller's arrays; the LiteRT backend's ``invoke_into``
writes inputs straight into the interpreter and survives a failing writer."""

from __future__ import annotations

import numpy as np
import pytest

import edgeship  # noqa: E402
from edgeship import runtime as rt  # noqa: E402
from edgeship.errors import InputError  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundles(digits_cnn, digits, tmp_path_factory):
    """{"int8": int8 I/O (quantized outputs), "float": float I/O (float outputs)} of the digits CNN."""
    x, _ = digits
    root = tmp_path_factory.mktemp("runbuf")
    return {io: edgeship.convert(digits_cnn, str(root / io), calib=x[:200], io=io).bundle for io in ("int8", "float")}


@pytest.fixture(scope="module")
def batch(digits):
    return np.asarray(digits[0][:1], np.float32), np.asarray(digits[0][1:2], np.float32)


@pytest.mark.parametrize("io", ["int8", "float"])
def test_returned_arrays_are_the_callers(bundles, batch, io):
    a, b = batch
    with rt.load(bundles[io]) as m:
        name = m.outputs[0].name
        ya = m.run(a)[name]
        keep = ya.copy()
        yb = m.run(b)[name]
        assert not np.array_equal(keep, yb)  # two different digits: the check below means something
        np.testing.assert_array_equal(ya, keep)  # the second call did not write into the first result
        assert not np.shares_memory(ya, yb)


@pytest.mark.parametrize("io", ["int8", "float"])
def test_out_writes_the_same_values_into_the_callers_arrays(bundles, batch, io):
    a, b = batch
    with rt.load(bundles[io]) as m:
        name = m.outputs[0].name
        first = m.run(a)
        buf = {name: np.full_like(first[name], np.nan)}
        got = m.run(b, out=buf)
        assert got[name] is buf[name]
        np.testing.assert_array_equal(got[name], m.run(b)[name])
        again = m.run(a, out=got)  # the previous result passed back: reused, overwritten by choice
        assert again[name] is buf[name]
        np.testing.assert_array_equal(again[name], first[name])


def test_out_is_checked(bundles, batch):
    a, _ = batch
    with rt.load(bundles["int8"]) as m:
        name = m.outputs[0].name
        shape = m.run(a)[name].shape
        with pytest.raises(InputError, match="output names"):
            m.run(a, out={"nope": np.zeros(shape, np.float32)})
        with pytest.raises(InputError, match="float32"):
            m.run(a, out={name: np.zeros(shape, np.float64)})
        with pytest.raises(InputError, match="shaped"):
            m.run(a, out={name: np.zeros((2,) + shape[1:], np.float32)})
        ro = np.zeros(shape, np.float32)
        ro.flags.writeable = False
        with pytest.raises(InputError, match="writable"):
            m.run(a, out={name: ro})


def test_invoke_into_writes_the_interpreters_buffer_and_survives_a_failing_writer(bundles, batch):
    a, _ = batch
    with rt.load(bundles["int8"]) as m:
        name = m.outputs[0].name
        backend = m._backend
        q = np.clip(np.rint(a / m.inputs[0].quantization.scale[0]) + m.inputs[0].quantization.zero_point[0],
                    -128, 127).astype(np.int8)
        want = backend.invoke([q])[0]
        seen = []

        def write(buffers):
            seen.append((buffers[0].shape, buffers[0].dtype))
            buffers[0][...] = q

        np.testing.assert_array_equal(backend.invoke_into(write)[0], want)
        assert seen == [(q.shape, np.dtype(np.int8))]

        def broken(buffers):
            view = buffers[0]  # a local holding the interpreter's memory, in the traceback's frame
            raise RuntimeError(f"writer failed on {view.shape}")

        with pytest.raises(RuntimeError, match="writer failed") as kept:
            backend.invoke_into(broken)
        # the caller still holds the exception, yet no view of the buffers survived in it: the interpreter runs
        # (LiteRT refuses invoke() while one is alive)
        assert kept.value.__traceback__ is not None
        np.testing.assert_array_equal(backend.invoke_into(write)[0], want)
        np.testing.assert_array_equal(m.run(q)[name], m.run(a)[name])


def test_predict_from_several_threads_equals_serial(bundles):
    """predict's fused path writes into the one interpreter's input tensor under the model's lock: concurrent
    calls give each frame its own result."""
    from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415

    pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (20 + i, 18 + 2 * i, 3), dtype=np.uint8) for i in range(12)]
    with rt.load(bundles["int8"]) as m:
        name = m.outputs[0].name
        serial = [m.predict(f)[name] for f in frames]
        assert len({s.tobytes() for s in serial}) > 1  # different frames, different results
        with ThreadPoolExecutor(4) as pool:
            for _ in range(3):
                got = list(pool.map(lambda f: m.predict(f)[name], frames))
                for g, s in zip(got, serial):
                    np.testing.assert_array_equal(g, s)


def test_predict_after_a_larger_batch_still_matches(bundles, digits):
    """run() of 8 samples resizes a dynamic-batch interpreter; predict then goes through run() once (batch back
    to 1) and writes into the input tensor again: the same result every time."""
    pytest.importorskip("cv2")
    frame = np.random.default_rng(9).integers(0, 256, (30, 26, 3), dtype=np.uint8)
    with rt.load(bundles["int8"]) as m:
        name = m.outputs[0].name
        first = m.predict(frame)[name]
        assert m.inputs[0].shape[0] is None  # the .tflite's batch axis is dynamic
        assert m.run(np.asarray(digits[0][:8], np.float32))[name].shape[0] == 8
        for _ in range(2):
            np.testing.assert_array_equal(m.predict(frame)[name], first)
