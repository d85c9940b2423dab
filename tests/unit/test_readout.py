"""The agent's read-only window for views and metrics (issue 11)."""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest

from meshroute.agent import metrics, views
from meshroute.agent.readout import Readout
from tests.unit.test_views_clock import agent_with_peer

# What only readout.py may touch: the agent's insides.
INSIDES = {"core", "sync", "bus", "clock", "stats", "reconciler"}


def test_the_readout_shows_the_peer_and_the_installed_routes():
    agent, _clock = agent_with_peer(offset_ms=0)
    address, hop = ipaddress.ip_address("10.100.0.7"), ipaddress.ip_address("10.200.0.2")
    agent.mirror.installed[address] = hop
    seen = Readout(agent)
    assert list(seen.peers) == ["p1"] and seen.installed == {address: hop}
    assert (seen.name, seen.monotonic(), seen.wall_now()) == ("me", 10.0, 1_800_000_000.0)


def test_the_readout_mappings_refuse_writes():
    agent, _clock = agent_with_peer(offset_ms=0)
    seen = Readout(agent)
    with pytest.raises(TypeError):
        seen.peers["intruder"] = seen.peers["p1"]  # type: ignore[index]
    with pytest.raises(TypeError):
        seen.installed[ipaddress.ip_address("10.100.0.9")] = None  # type: ignore[index]
    assert "intruder" not in agent.core.table.peers


@pytest.mark.parametrize("module", [views, metrics])
def test_views_and_metrics_read_the_agent_only_through_the_readout(module):
    tree = ast.parse(Path(module.__file__).read_text())
    reached = sorted(
        f"line {node.lineno}: agent.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "agent"
        and node.attr in INSIDES
    )
    assert reached == []
