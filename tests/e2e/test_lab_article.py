"""The article's own setup: two servers, the management net a tun OpenVPN on vpnsrvA.

``lab up --servers 2 --backbone openvpn-tun``: s1 (vpnsrvA) runs the backbone's
OpenVPN server on ``bb0`` (the article's tun1) at 10.200.200.1, s2 (vpnsrvB) is its
client with ``iroute`` for the client networks, and the broker is a second client
(its own address only). With one server peer every packet the hub forwards toward
the client networks belongs to s2, so meshroute's routes are carried: the full
matrix (v4, v6) and moves pass over it (docs/backbone.md). Agent kills and broker
outages over an OpenVPN backbone run in test_lab3.py (``lab3[openvpn]``); a third
server breaks this form: tests/functional/test_backbone_forms.py.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator

import pytest

from meshroute.lab import observe
from tests.e2e.labkit import RunningLab, running_lab
from tests.e2e.test_lab3 import _converge_after_moves

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def article() -> Iterator[RunningLab]:
    with running_lab("t", servers=2, clients=4, backbone="openvpn-tun") as running:
        yield running


def test_the_backbone_is_a_tun_server_on_s1_with_s2_and_the_broker_its_clients(
    article: RunningLab,
) -> None:
    conf = (article.lab.paths.root / "s1" / "backbone.conf").read_text()
    assert "mode server" in conf and "dev-type tun" in conf
    ccd = article.lab.paths.root / "s1" / "ccd-bb"
    assert "iroute 10.100.100.0 255.255.255.0" in (ccd / "s2").read_text()
    assert "iroute" not in (ccd / "broker").read_text()
    agent = article.lab.paths.agent_conf("s2").read_text()
    assert "10.200.200.254" in agent  # the broker is reached over the backbone
    assert json.loads(article.cli("status", "--json").stdout)["backbone"] == "openvpn-tun"


def test_full_matrix_and_routes_over_the_articles_backbone(article: RunningLab) -> None:
    article.assert_converged()
    failed = article.failed_pings((4, 6))
    assert failed == []
    plan, homes = article.lab.plan(), article.lab.state().client_server
    for server in plan.servers:
        routes = observe.kernel_routes(server.netns)
        elsewhere = [c for c in plan.clients if homes[c.name] != server.name]
        assert len(routes) == 2 * len(elsewhere) > 0
        for client in elsewhere:
            owner = plan.server(homes[client.name])
            assert (ipaddress.ip_network(client.address), owner.backbone) in routes


def test_moves_back_and_forth_over_the_articles_backbone(article: RunningLab) -> None:
    article.assert_converged()
    # c1 (home s1) -> s2 -> back to s1, where its stale session still is.
    took = _converge_after_moves(article, [("c1", "s2"), ("c1", "s1")])
    assert took < 8, f"matrix ok only after {took:.1f}s"
