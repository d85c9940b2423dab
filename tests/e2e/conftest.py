"""The e2e tier's shared lab: 3 servers and 6 clients, up once per module and backbone.

``lab3`` runs every test that uses it once per backbone (the control-plane fault
tests of test_lab3.py only on the bridge): the bridge and the OpenVPN tap hub
(``--backbone openvpn``, see docs/backbone.md) in CI;
``MESHROUTE_E2E_BACKBONES=bridge,openvpn,openvpn-p2p`` picks others (each costs
about a minute).

Tests that change the lab (moves, agent kills, broker outages) first wait for it
to be converged again, so they do not depend on each other's order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.e2e.labkit import RunningLab, running_lab

BACKBONES = os.environ.get("MESHROUTE_E2E_BACKBONES", "bridge,openvpn").split(",")
TAGS = {"bridge": "a", "openvpn": "o", "openvpn-p2p": "p", "openvpn-tun": "t"}


@pytest.fixture(scope="module", params=BACKBONES)
def lab3(request: pytest.FixtureRequest) -> Iterator[RunningLab]:
    tag = TAGS[request.param]
    with running_lab(tag, servers=3, clients=6, backbone=request.param) as running:
        yield running
