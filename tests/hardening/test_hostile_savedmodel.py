"""SavedModels against the op allow-list: file, print, checkpoint, summary and dataset ops anywhere in the file.

Each SavedModel is built here with TensorFlow (the ops sit in the serving
function, in a resource initializer, in a function the serving function
calls) or crafted by editing ``saved_model.pb`` (an extra op in TensorFlow's
own checkpoint functions, a checkpoint path from a constant, the checkpoint
function called from outside the saver, an asset outside ``assets/``, a link
or a FIFO in the folder). ``edgeship convert`` must refuse each with exit 2
and one line naming the op and where it sits, before ``tf.saved_model.load``;
the canary files must stay untouched and the secret file unread (inotify).
A control run with ``allow_unsafe=True`` shows the payloads are live.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

from _hostile_keras_util import FileWatch, one_line, run_convert
from _hutil import record

pytestmark = pytest.mark.hardening

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")

from edgeship import cli  # noqa: E402
from edgeship.converters.sources import keras as loader  # noqa: E402
from edgeship.errors import UnsafeModelError  # noqa: E402

AREA = "(b3) hostile SavedModels"
SPEC = [tf.TensorSpec((1, 4), tf.float32)]


def _build(out, kind, new_canary, log_canary, secret):
    """A SavedModel whose serving function / initializer carries the ``kind`` payload."""

    class Res(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.VarHandleOp(dtype=tf.float32, shape=[], shared_name=f"r_{kind}")

        def _initialize(self):
            tf.print("pwned", output_stream=f"file://{log_canary}")
            return tf.raw_ops.AssignVariableOp(resource=self.resource_handle, value=1.0)

    @tf.function
    def helper(x):
        tf.print("pwned", output_stream=f"file://{log_canary}")
        return x

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones((4, 2)))
            if kind == "PrintV2 in a resource initializer":
                self.r = Res()
            if kind == "InitializeTableFromTextFileV2 (initializer)":
                self.t = tf.lookup.StaticHashTable(
                    tf.lookup.TextFileInitializer(str(secret), tf.string, 0, tf.int64, 1, delimiter=" "), -1)

        @tf.function(input_signature=SPEC)
        def serve(self, x):
            y = tf.matmul(x, self.w)
            if kind == "PrintV2 in the serving function":
                tf.print("pwned", output_stream=f"file://{log_canary}")
            elif kind == "PrintV2 in a called library function":
                x = helper(x)
            elif kind == "SaveV2 outside variables/":
                tf.raw_ops.SaveV2(prefix=str(new_canary), tensor_names=["x"], shape_and_slices=[""], tensors=[x])
            elif kind == "RestoreV2 outside variables/":
                r = tf.raw_ops.RestoreV2(prefix=str(secret), tensor_names=["x"], shape_and_slices=[""],
                                         dtypes=[tf.float32])
                y = y + tf.reduce_sum(r[0]) * 0
            elif kind == "MergeV2Checkpoints":
                tf.raw_ops.MergeV2Checkpoints(checkpoint_prefixes=[str(secret)], destination_prefix=str(new_canary))
            elif kind == "ReadFile":
                y = y + tf.cast(tf.strings.length(tf.io.read_file(str(secret))), tf.float32) * 0
            elif kind == "WriteFile":
                tf.io.write_file(str(new_canary), "pwned")
            elif kind == "MatchingFiles":
                y = y + tf.cast(tf.size(tf.io.matching_files(str(secret.parent / "*"))), tf.float32) * 0
            elif kind == "summary writer":
                w = tf.raw_ops.SummaryWriter(shared_name="w")
                tf.raw_ops.CreateSummaryFileWriter(writer=w, logdir=str(new_canary), max_queue=1, flush_millis=1,
                                                   filename_suffix=".v2")
                tf.raw_ops.WriteScalarSummary(writer=w, step=0, tag="s", value=tf.reduce_sum(x))
                tf.raw_ops.FlushSummaryWriter(writer=w)
            elif kind == "dataset load":
                ds = tf.data.Dataset.load(str(secret) + ".ds", element_spec=tf.TensorSpec((), tf.float32))
                y = y + ds.reduce(0.0, lambda a, b: a + b) * 0
            elif kind == "dataset save":
                tf.data.Dataset.from_tensor_slices(x[0]).save(str(new_canary))
            elif kind == "InitializeTableFromTextFileV2 (initializer)":
                y = y + tf.cast(self.t.lookup(tf.constant("a")), tf.float32) * 0
            return {"y": y}

    m = M()
    tf.saved_model.save(m, str(out), signatures={"serving_default": m.serve})
    return str(out)


BUILT = ["PrintV2 in a resource initializer", "PrintV2 in the serving function", "PrintV2 in a called library function",
         "SaveV2 outside variables/", "RestoreV2 outside variables/", "MergeV2Checkpoints", "ReadFile", "WriteFile",
         "MatchingFiles", "summary writer", "dataset load", "dataset save",
         "InitializeTableFromTextFileV2 (initializer)"]
NEEDLE = {"PrintV2 in a resource initializer": "PrintV2", "PrintV2 in the serving function": "PrintV2",
          "PrintV2 in a called library function": "PrintV2", "SaveV2 outside variables/": "SaveV2",
          "RestoreV2 outside variables/": "RestoreV2", "MergeV2Checkpoints": "MergeV2Checkpoints",
          "ReadFile": "ReadFile", "WriteFile": "WriteFile", "MatchingFiles": "MatchingFiles",
          "summary writer": "SummaryFileWriter", "dataset load": "Dataset", "dataset save": "Dataset",
          "InitializeTableFromTextFileV2 (initializer)": "InitializeTableFromTextFileV2"}


def _edit_pb(folder, edit):
    from tensorflow.core.protobuf import saved_model_pb2

    pb = os.path.join(folder, "saved_model.pb")
    sm = saved_model_pb2.SavedModel()
    with open(pb, "rb") as fh:
        sm.ParseFromString(fh.read())
    edit(sm.meta_graphs[0])
    with open(pb, "wb") as fh:
        fh.write(sm.SerializeToString())


def _fn(mg, marker):
    return next(f for f in mg.graph_def.library.function if marker in f.signature.name)


def _crafted(tmp, plain_builder, secret, log_canary):
    cases = {}

    def const_prefix(mg):
        f = _fn(mg, "traced_restore")
        node = next(n for n in f.node_def if n.op == "RestoreV2")
        c = f.node_def.add(name="evil_prefix", op="Const")
        c.attr["dtype"].type = tf.string.as_datatype_enum
        c.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(str(secret)))
        node.input[0] = "evil_prefix:output:0"

    def print_in_saver(mg):
        f = _fn(mg, "traced_save")
        n = f.node_def.add(name="evil_print", op="PrintV2")
        n.attr["output_stream"].s = f"file://{log_canary}".encode()

    def saver_called_elsewhere(mg):
        save = _fn(mg, "traced_save").signature.name
        n = mg.graph_def.node.add(name="evil_call", op="StatefulPartitionedCall")
        n.attr["f"].func.name = save

    def asset_outside(mg):
        a = mg.asset_file_def.add()
        a.filename = "../../" + secret.name
        a.tensor_info.name = "asset_path:0"

    def asset_absolute(mg):
        a = mg.asset_file_def.add()
        a.filename = str(secret)
        a.tensor_info.name = "asset_path:0"

    def registered_class(mg):
        mg.object_graph_def.nodes[0].registered_name = "evil.Reviver"

    for name, edit, needle in [
        ("object revived from an unknown registered class", registered_class, "registered class"),
        ("checkpoint path from a constant (RestoreV2 in traced_restore)", const_prefix, "constant"),
        ("PrintV2 added to the checkpoint function", print_in_saver, "PrintV2"),
        ("checkpoint function called from the graph", saver_called_elsewhere, "SaveV2"),
        ("asset ../../secret", asset_outside, "asset"),
        ("asset absolute path", asset_absolute, "asset"),
    ]:
        d = plain_builder(tmp / f"crafted{len(cases)}")
        _edit_pb(d, edit)
        cases[name] = (d, needle)
    d = plain_builder(tmp / "link")
    os.symlink(secret, os.path.join(d, "variables", "evil.data"))
    cases["symlink to a file outside in variables/"] = (d, "symbolic link")
    d = plain_builder(tmp / "fifo")
    os.mkfifo(os.path.join(d, "assets", "pipe"))
    cases["FIFO in the folder"] = (d, "FIFO")
    return cases


def test_hostile_saved_models_are_refused_and_nothing_runs(tmp_path, capsys):
    new_canary = tmp_path / "created_canary"
    log_canary = tmp_path / "log_canary.txt"
    log_canary.write_text("original\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("a 1\n")
    cases = {k: (_build(tmp_path / f"sm{i}", k, new_canary, log_canary, secret), NEEDLE[k])
             for i, k in enumerate(BUILT)}
    plain = lambda d: _build(d, "plain", new_canary, log_canary, secret)  # noqa: E731
    cases.update(_crafted(tmp_path, plain, secret, log_canary))
    log_canary.write_text("original\n")  # building ran the eager initializer once: reset the canaries
    if new_canary.is_dir():
        shutil.rmtree(new_canary)
    elif new_canary.exists():
        new_canary.unlink()
    watch = FileWatch(secret)
    watch.events()
    rows, slowest = {}, 0.0
    for name, (path, needle) in cases.items():
        out = tmp_path / f"out{len(rows)}"
        t0 = time.perf_counter()
        rc, err = run_convert(cli, capsys, path, out)
        slowest = max(slowest, time.perf_counter() - t0)
        rows[name] = dict(rc=rc, one=one_line(err), named=needle in err, events=watch.events(),
                          created=new_canary.exists(), log=log_canary.read_text() != "original\n",
                          out=out.exists(), err=err.strip())
    watch.close()
    refused = sum(r["rc"] == 2 for r in rows.values())
    ran = sum(r["created"] or r["log"] for r in rows.values())
    record(AREA, **{"tried": len(rows), "host crashes": 0, "rejected (typed)": refused, "accepted": len(rows) - refused,
                    "slowest (s)": slowest,
                    "notes": (f"payloads run {ran}, secret/canary opens (inotify) "
                              f"{sum(r['events'] for r in rows.values())}, partial bundles "
                              f"{sum(r['out'] for r in rows.values())}")})
    for name, r in rows.items():
        assert r["rc"] == 2 and r["one"], (name, r)
        assert r["named"] and "--allow-unsafe" in r["err"], (name, r["err"])  # the way past, or that there is none
        assert not (r["created"] or r["log"] or r["out"]) and r["events"] == 0, (name, r)


def test_printv2_initializer_is_live_without_the_check(tmp_path):
    """Control: TensorFlow runs the initializer's PrintV2 at load, appending to the file."""
    log = tmp_path / "log.txt"
    log.write_text("original\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("a 1\n")
    p = _build(tmp_path / "sm", "PrintV2 in a resource initializer", tmp_path / "x", log, secret)
    log.write_text("original\n")  # building ran the initializer eagerly once
    with pytest.raises(UnsafeModelError, match=r"PrintV2 \(node 'PrintV2' in function '__inference__initializer"):
        loader.load(p)
    assert log.read_text() == "original\n"
    loader.load(p, allow_unsafe=True)
    appended = log.read_text() != "original\n"
    r = _build(tmp_path / "rd", "ReadFile", tmp_path / "x", log, secret)
    watch = FileWatch(secret)
    watch.events()
    loader.load(r, allow_unsafe=True).predict(np.ones((1, 4), np.float32))
    reads = watch.events()
    watch.close()
    record(AREA, notes=f"control with allow_unsafe: initializer PrintV2 appended {int(appended)}/1, "
                       f"ReadFile secret opens {reads}")
    assert appended and reads > 0
