"""HDF5 weights that take their bytes from other files: refused before any loader opens them.

The kernel of a Dense layer is replaced, in Keras 3 ``.keras`` weights
(``model.weights.h5`` in the zip), tf_keras ``.keras`` weights and a legacy
``.h5`` model, by an *external dataset* (raw bytes of another file), a
*virtual dataset* (mapped from another HDF5 file), an *external link*, or a
soft link that does not resolve inside the file (absolute to nowhere,
relative, or through an external link). ``edgeship convert`` must refuse each (exit 2, one line naming the
HDF5 object), the secret files must see 0 opens (inotify) and no file under
the output may hold the secret's bytes. A control run with
``allow_unsafe=True`` shows that tf_keras copies the external file's bytes
into the model's weights when nothing checks.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile

import numpy as np
import pytest

from _hostile_keras_util import FileWatch, one_line, rewrite_keras, run_convert, tree_holds
from _hutil import record

pytestmark = pytest.mark.hardening

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
h5py = pytest.importorskip("h5py")
keras = pytest.importorskip("keras")
tf_keras = pytest.importorskip("tf_keras")

from edgeship import cli  # noqa: E402
from edgeship.converters.sources import keras as loader  # noqa: E402
from edgeship.errors import UnsafeModelError  # noqa: E402

AREA = "(b4) hostile HDF5 weights"
PATTERN = np.full((4, 2), 1234.5, np.float32)  # the secret's bytes, recognisable in any output
KINDS = ("external dataset", "virtual dataset", "external link", "soft link to nowhere", "relative soft link",
         "soft link through an external link")
NEEDLE = {"external dataset": "external dataset", "virtual dataset": "virtual dataset",
          "external link": "external link", "soft link to nowhere": "soft link", "relative soft link": "soft link",
          "soft link through an external link": "link"}


def _secrets(tmp):
    raw = tmp / "secret.bin"
    PATTERN.tofile(raw)
    h5 = tmp / "secret.h5"
    with h5py.File(h5, "w") as s:
        s["data"] = PATTERN
    return raw, h5


def _poison(path, kind, raw, secret_h5):
    with h5py.File(path, "r+") as f:
        found = []
        f.visititems(lambda n, o: found.append(n) if isinstance(o, h5py.Dataset) and o.shape == (4, 2) else None)
        k = found[0]
        parent, name = k.rsplit("/", 1) if "/" in k else ("/", k)
        shape, dtype = f[k].shape, f[k].dtype
        del f[k]
        g = f[parent]
        if kind == "external dataset":
            g.create_dataset(name, shape, dtype, external=[(str(raw), 0, PATTERN.nbytes)])
        elif kind == "virtual dataset":
            lay = h5py.VirtualLayout(shape, dtype)
            lay[...] = h5py.VirtualSource(str(secret_h5), "data", shape=shape)
            g.create_virtual_dataset(name, lay)
        elif kind == "external link":
            g[name] = h5py.ExternalLink(str(secret_h5), "/data")
        elif kind == "soft link through an external link":
            f["/0_ext"] = h5py.ExternalLink(str(secret_h5), "/")
            g[name] = h5py.SoftLink("/0_ext/data")
        elif kind == "soft link to nowhere":
            g[name] = h5py.SoftLink("/nowhere/kernel")
        else:
            g[name] = h5py.SoftLink("../../outside")


def _poisoned_keras(base, dst, kind, raw, secret_h5, scratch):
    member = scratch / f"{dst.stem}.weights.h5"
    with zipfile.ZipFile(base) as z:
        member.write_bytes(z.read("model.weights.h5"))
    _poison(member, kind, raw, secret_h5)
    return rewrite_keras(base, dst, members={"model.weights.h5": member.read_bytes()})


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("h5bases")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(d / "k3.keras")
    tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)]).save(d / "tfk.keras")
    with pytest.warns(UserWarning):
        tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)]).save(d / "tfk.h5")
    return d


def test_hdf5_external_data_is_refused_and_no_byte_leaves_the_secret(tmp_path, bases, capsys):
    raw, secret_h5 = _secrets(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    cases = {}
    for base in ("k3.keras", "tfk.keras", "tfk.h5"):
        for kind in KINDS:
            dst = tmp_path / f"{len(cases)}{os.path.splitext(base)[1]}"
            if base.endswith(".keras"):
                _poisoned_keras(bases / base, dst, kind, raw, secret_h5, scratch)
            else:
                shutil.copy(bases / base, dst)
                _poison(dst, kind, raw, secret_h5)
            cases[f"{base}: {kind}"] = (dst, ["--allow-legacy-h5"] if base.endswith(".h5") else [], NEEDLE[kind])
    watch = FileWatch(raw, secret_h5)
    watch.events()
    rows, slowest = {}, 0.0
    for name, (path, flags, needle) in cases.items():
        out = tmp_path / f"out{len(rows)}"
        t0 = time.perf_counter()
        rc, err = run_convert(cli, capsys, path, out, *flags)
        slowest = max(slowest, time.perf_counter() - t0)
        rows[name] = dict(rc=rc, one=one_line(err), named=needle in err and "HDF5 object" in err,
                          opens=watch.events(), leaked=tree_holds(out, PATTERN.tobytes()), out=out.exists(),
                          err=err.strip())
    watch.close()
    refused = sum(r["rc"] == 2 for r in rows.values())
    record(AREA, **{"tried": len(rows), "host crashes": 0, "rejected (typed)": refused, "accepted": len(rows) - refused,
                    "slowest (s)": slowest,
                    "notes": (f"opens of the outside files (inotify) {sum(r['opens'] for r in rows.values())}, "
                              f"outputs holding their bytes {sum(r['leaked'] for r in rows.values())}, partial "
                              f"bundles {sum(r['out'] for r in rows.values())}")})
    for name, r in rows.items():
        assert r["rc"] == 2 and r["one"], (name, r)
        assert r["named"] and "--allow-unsafe" in r["err"], (name, r["err"])
        assert r["opens"] == 0 and not r["leaked"] and not r["out"], (name, r)


def test_external_dataset_leaks_without_the_check(tmp_path, bases):
    """Control: tf_keras reads an external dataset's bytes into the weights when nothing checks."""
    raw, secret_h5 = _secrets(tmp_path)
    dst = tmp_path / "ext.keras"
    _poisoned_keras(bases / "tfk.keras", dst, "external dataset", raw, secret_h5, tmp_path)
    with pytest.raises(UnsafeModelError, match="external dataset"):
        loader.load(str(dst))
    src = loader.load(str(dst), allow_unsafe=True)
    leaked = any(np.array_equal(w, PATTERN) for w in src.handle.get_weights())
    record(AREA, notes=f"control with allow_unsafe: secret bytes copied into the weights {int(leaked)}/1")
    assert leaked
