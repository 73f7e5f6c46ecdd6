"""Hostile Keras files through ``edgeship convert``: refused before deserialisation, payload never runs.

Every file carries a payload that would create a canary file if any of it ran
(Lambda bytecode, an ``os.system`` gadget, a config that switches Keras' safe
mode off before a Lambda, a Lambda and a ``TFOpLambda`` calling
``tf.io.write_file`` in a legacy ``.h5`` opened with ``--allow-legacy-h5``, a
``TFSMLayer`` pointing at an external SavedModel). More variants, against the
allow-lists: ``test_hostile_keras_allowlist.py``.
``keras.saving.load_model`` and ``tf_keras.models.load_model`` are wrapped
with a recorder (they still run unchanged) to show that none was called: the
refusal came from edgeship's scan of the config, before Keras deserialised
anything.
"""

from __future__ import annotations

import json
import os
import zipfile

import pytest

from _hutil import record

pytestmark = pytest.mark.hardening

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from edgeship import cli  # noqa: E402


def _rewrite(src, dst, mutate):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(data)
                mutate(cfg)
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    return str(dst)


def _lambda_model(canary):
    path = str(canary)
    return keras.Sequential([
        keras.Input((4,)),
        keras.layers.Lambda(lambda t: (open(path, "w").write("pwned"), t)[1], name="evil_lambda"),
        keras.layers.Dense(2),
    ])


@pytest.fixture()
def load_calls(monkeypatch):
    calls = []
    real = keras.saving.load_model

    def recorder(*a, **kw):
        calls.append(("keras.saving.load_model", a[:1]))
        return real(*a, **kw)

    monkeypatch.setattr(keras.saving, "load_model", recorder)
    monkeypatch.setattr(keras.models, "load_model", recorder)
    try:
        import tf_keras

        real_tfk = tf_keras.models.load_model

        def recorder_tfk(*a, **kw):
            calls.append(("tf_keras.models.load_model", a[:1]))
            return real_tfk(*a, **kw)

        monkeypatch.setattr(tf_keras.models, "load_model", recorder_tfk)
    except ImportError:
        pass
    return calls


def _cases(tmp_path, canary):
    plain = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(plain)
    lam = tmp_path / "lambda.keras"
    _lambda_model(canary).save(lam)
    cases = {"lambda-bytecode": (str(lam), [])}
    gadget = {"module": "os", "class_name": "system", "config": f"touch {canary}", "registered_name": None}
    cases["module-gadget os.system"] = (
        _rewrite(plain, tmp_path / "gadget.keras", lambda c: c["config"]["layers"].insert(0, gadget)), [])
    cases["activation = os.system"] = (
        _rewrite(plain, tmp_path / "act.keras", lambda c: c["config"]["layers"][-1]["config"].__setitem__(
            "activation", {"module": "os", "class_name": "function", "config": "system", "registered_name": None})),
        [])
    cases["get_file gadget (CVE-2025-8747 style)"] = (
        _rewrite(plain, tmp_path / "getfile.keras", lambda c: c["config"]["layers"].insert(0, {
            "module": "keras.utils", "class_name": "get_file", "registered_name": None,
            "config": {"fname": str(canary), "origin": "file:///etc/hostname"}})), [])

    def switch(c):
        c["config"]["layers"].insert(0, {"module": "keras.config", "class_name": "enable_unsafe_deserialization",
                                         "config": {}, "registered_name": None})
    cases["enable_unsafe_deserialization + Lambda"] = (_rewrite(lam, tmp_path / "switch.keras", switch), [])
    h5 = tmp_path / "lambda.h5"
    try:
        _lambda_model(canary).save(h5)
        cases["Lambda in .h5 (--allow-legacy-h5)"] = (str(h5), ["--allow-legacy-h5"])
    except Exception as exc:  # pragma: no cover - depends on the Keras build
        record("(b) hostile Keras", notes=f".h5 case not built: {exc!r}"[:120])
    try:
        import h5py
        import tf_keras

        ops = tmp_path / "tfop.h5"
        tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)]).save(ops)
        with h5py.File(ops, "r+") as f:
            cfg = json.loads(f.attrs["model_config"])
            cfg["config"]["layers"].insert(1, {
                "class_name": "TFOpLambda", "name": "evil_op", "inbound_nodes": [
                    ["_CONSTANT_VALUE", -1, str(canary), {"contents": "pwned"}]],
                "config": {"name": "evil_op", "trainable": True, "dtype": "float32", "function": "io.write_file"}})
            f.attrs["model_config"] = json.dumps(cfg)
        cases["TFOpLambda io.write_file in .h5 (--allow-legacy-h5)"] = (str(ops), ["--allow-legacy-h5"])
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    sm = tmp_path / "external_sm"
    os.makedirs(sm)
    cases["TFSMLayer -> external SavedModel"] = (
        _rewrite(plain, tmp_path / "tfsm.keras", lambda c: c["config"]["layers"].insert(0, {
            "module": "keras.layers", "class_name": "TFSMLayer", "registered_name": None,
            "config": {"name": "external_sm", "filepath": str(sm), "call_endpoint": "serve"}})), [])
    return cases


def test_hostile_keras_files_are_refused_and_payloads_never_run(tmp_path, load_calls, capsys):
    canary = tmp_path / "canary.txt"
    cases = _cases(tmp_path, canary)
    canary.unlink(missing_ok=True)  # building the Lambda models above ran the lambda once
    outcomes = {}
    for name, (path, flags) in cases.items():
        out = tmp_path / ("out_" + str(abs(hash(name))))
        calls_before = len(load_calls)
        rc = cli.main(["convert", path, "-o", str(out), "--calib", "random", "--calib-count", "4", *flags])
        err = capsys.readouterr().err
        outcomes[name] = (rc, "refused" in err.lower() or "unsafe" in err.lower(), len(load_calls) - calls_before,
                          canary.exists(), out.exists())
    refused = sum(1 for rc, *_ in outcomes.values() if rc == 2)
    deserialised = sum(1 for *_, n, _, _ in [(o[0], o[1], o[2], o[3], o[4]) for o in outcomes.values()] if n)
    record("(b) hostile Keras", **{
        "tried": len(outcomes), "host crashes": 0, "rejected (typed)": refused,
        "accepted": len(outcomes) - refused,
        "notes": (f"payloads run (canary written): {sum(o[3] for o in outcomes.values())}; "
                  f"reached keras load_model: {deserialised}; partial bundles: {sum(o[4] for o in outcomes.values())}; "
                  f"cases: {', '.join(outcomes)}")})
    reached_keras = []
    for name, (rc, _, calls, canary_written, out_exists) in outcomes.items():
        assert rc == 2, (name, rc)
        assert not canary_written, name
        assert not out_exists, name
        if calls:
            reached_keras.append(name)
    # Every payload, the keras.utils.get_file gadget (CVE-2025-8747 style) included, is
    # refused by edgeship's scan before Keras deserialises anything.
    assert reached_keras == [], reached_keras
