"""The lab's broker plan: one node named ``broker`` or a cluster ``b1..bK``."""

from __future__ import annotations

import pytest

from meshroute.lab.topology import make_plan, node_netns, owns_namespace


def test_one_broker_keeps_its_name_and_address():
    plan = make_plan("mr", 3, 2)
    assert [(b.name, b.netns, str(b.address)) for b in plan.brokers] == [
        ("broker", "mr-broker", "10.200.200.254")
    ]
    assert not plan.clustered and plan.broker_ns == "mr-broker"


def test_a_cluster_has_one_namespace_and_address_per_node():
    plan = make_plan("mr", 4, 2, brokers=3)
    assert [(b.name, b.netns, str(b.address), str(b.address6)) for b in plan.brokers] == [
        ("b1", "mr-b1", "10.200.200.254", "fd00:200::fe"),
        ("b2", "mr-b2", "10.200.200.253", "fd00:200::fd"),
        ("b3", "mr-b3", "10.200.200.252", "fd00:200::fc"),
    ]
    assert plan.clustered and plan.namespaces[:4] == ("mr-net", "mr-b1", "mr-b2", "mr-b3")
    assert all(owns_namespace("mr", b.netns) for b in plan.brokers)
    assert node_netns("mr", "b2") == "mr-b2"


def test_every_server_tries_every_node_starting_with_a_different_one():
    plan = make_plan("mr", 4, 0, brokers=3)
    orders = [[b.name for b in plan.broker_order(s)] for s in plan.servers]
    assert orders == [["b1", "b2", "b3"], ["b2", "b3", "b1"], ["b3", "b1", "b2"],
                      ["b1", "b2", "b3"]]  # fmt: skip


def test_broker_count_is_bounded():
    with pytest.raises(ValueError, match=r"brokers must be 1\.\.5"):
        make_plan("mr", 3, 0, brokers=6)
    with pytest.raises(KeyError, match="no broker 'b9'"):
        make_plan("mr", 3, 0, brokers=3).broker_node("b9")
