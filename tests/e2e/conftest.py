"""The e2e tier's shared lab: 3 servers and 6 clients, up once per module.

Tests that change the lab (moves, agent kills, broker outages) first wait for it
to be converged again, so they do not depend on each other's order.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.labkit import RunningLab, running_lab


@pytest.fixture(scope="module")
def lab3() -> Iterator[RunningLab]:
    with running_lab("a", servers=3, clients=6) as running:
        yield running
