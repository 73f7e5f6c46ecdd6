"""``edgeship sweep`` on a two-node Ray cluster simulated on this machine (``ray.cluster_utils.Cluster``).

Conversions spread over both nodes (one CPU each); every timing runs on one node; the
records equal those of the same trials on one machine (the serial loop).
"""

from __future__ import annotations

import os

import pytest

from _sweep_shared import AXES, comparable, ray_processes, serial_records, shared_inputs, wait_no_ray_processes, \
    write_spec

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    before = ray_processes()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        c.shutdown()
    assert wait_no_ray_processes(before) == [], "Ray left processes behind"


def test_two_node_sweep_spreads_conversions_and_times_on_one_node(cluster, tmp_path_factory, digits,
                                                                    digits_cnn_file):
    from edgeship import sweep

    inputs = shared_inputs(tmp_path_factory.getbasetemp(), digits, digits_cnn_file)
    # the sweep joins the running cluster by its address (as --address / RAY_ADDRESS) and leaves it running
    res = sweep(write_spec(inputs["root"] / "cluster.toml", models=inputs["models"], data=inputs["data"], axes=AXES,
                           sweep={"output": "cluster-out"}), address=cluster.address)
    assert not ray.is_initialized()  # disconnected
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    assert res.counts["converted"] == 4 and res.counts["failed"] == 0
    conv_nodes = {r["conversion"]["node"] for r in res.records}
    assert conv_nodes == nodes  # two trials in flight at a time, one CPU per node: both nodes convert
    timing_nodes = {r["timing"]["node"] for r in res.records}
    assert timing_nodes == {cluster.head_node.node_id}  # one node, the driver's by default
    assert len(res.summary["groups"]) == 1  # one target, one timing node: one comparison
    # the same records as the trials run one by one in a loop
    assert comparable(serial_records(inputs)) == comparable(res.records)
    # a timing node that is not in the cluster is refused before any trial runs
    from edgeship.errors import InputError

    bad = write_spec(inputs["root"] / "badnode.toml", models=inputs["models"], data=inputs["data"], axes=AXES,
                     sweep={"output": "badnode-out"}, timing={"node": "no-such-node"})
    with pytest.raises(InputError, match=r"\[timing\] node 'no-such-node' is not a live node"):
        sweep(bad)
    assert os.listdir(inputs["root"] / "badnode-out" / "trials") == []
