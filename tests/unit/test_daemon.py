"""The daemon's edges: SIGHUP reload and the Prometheus endpoint (no root, no broker)."""

from __future__ import annotations

import logging
import socket
import urllib.request

from meshroute.agent import Agent, LoopSettings
from meshroute.bus.memory import MemoryBroker, MemoryBus
from meshroute.clock import FakeClock
from meshroute.config import load_config
from meshroute.core import AgentCore
from meshroute.daemon import _reloader, core_settings
from meshroute.dataplane.fake import FakeDataplane
from meshroute.metrics import serve_metrics
from meshroute.netinfo import resolve_defaults

CONF = """name = vpnsrvA
next_hop = 10.200.200.1
client_networks = 10.100.100.0/24
hold_time = {hold}
announce_interval = 2
"""


def make_agent(tmp_path, hold=15):
    path = tmp_path / "agent.conf"
    path.write_text(CONF.format(hold=hold))
    config = load_config(path, {}).config
    core = AgentCore(core_settings(config, resolve_defaults(config)), epoch=1)
    agent = Agent(core, bus=MemoryBus(MemoryBroker(), "vpnsrvA"), dataplane=FakeDataplane(),
                  status_source=list, clock=FakeClock(), settings=LoopSettings())  # fmt: skip
    return agent, config, path


def test_sighup_applies_what_can_change_and_names_what_cannot(tmp_path, caplog):
    agent, config, path = make_agent(tmp_path)
    reload = _reloader(agent, config, str(path), None)
    path.write_text(CONF.format(hold=30).replace("vpnsrvA", "vpnsrvZ") + "resync_interval = 7\n")
    with caplog.at_level(logging.INFO):
        reload()
    assert agent.core.table.hold_time == 30 and agent.settings.resync_interval == 7
    assert agent.core.name == "vpnsrvA"  # the name needs a restart
    assert "name changed; that needs a restart" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        reload()  # still not applied: still said
    assert "name changed; that needs a restart" in caplog.text


def test_sighup_with_a_broken_config_changes_nothing(tmp_path, caplog):
    agent, config, path = make_agent(tmp_path)
    reload = _reloader(agent, config, str(path), None)
    path.write_text(CONF.format(hold="soon"))
    reload()
    assert agent.core.table.hold_time == 15
    assert "config not reloaded" in caplog.text and "hold_time" in caplog.text


def test_metrics_endpoint_serves_the_agents_counters(tmp_path):
    agent, _, _ = make_agent(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    serve_metrics(agent, "127.0.0.1", port)
    agent.stats.hook_events = 7
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "meshroute_hook_events_total 7.0" in body
    assert "meshroute_local_claims 0.0" in body
    assert "meshroute_broker_connected 0.0" in body
