"""The e2e tier's shared lab: 3 servers and 6 clients, up once per module and backbone.

``lab3`` runs every test that uses it twice: over the bridge backbone and over the
OpenVPN tap hub (``--backbone openvpn``, see docs/backbone.md).

Tests that change the lab (moves, agent kills, broker outages) first wait for it
to be converged again, so they do not depend on each other's order.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.labkit import RunningLab, running_lab


@pytest.fixture(scope="module", params=["bridge", "openvpn"])
def lab3(request: pytest.FixtureRequest) -> Iterator[RunningLab]:
    tag = {"bridge": "a", "openvpn": "o"}[request.param]
    with running_lab(tag, servers=3, clients=6, backbone=request.param) as running:
        yield running
