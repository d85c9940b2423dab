"""The daemon's edges: SIGHUP reload and the Prometheus endpoint (no root, no broker)."""

from __future__ import annotations

import ipaddress
import logging
import os
import pathlib
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from meshroute import __version__
from meshroute.agent import metrics
from meshroute.agent.daemon import (
    _exit_code,
    _install_signals,
    _reloader,
    control_answer,
    core_settings,
)
from meshroute.agent.loop import Agent, LoopSettings
from meshroute.agent.metrics import AgentCollector, serve_metrics
from meshroute.bus.memory import MemoryBroker, MemoryBus
from meshroute.config.schema import load_config
from meshroute.core.clock import FakeClock, SystemClock
from meshroute.core.engine import AgentCore, CoreSettings
from meshroute.dataplane.fake import FakeDataplane
from meshroute.dataplane.netinfo import resolve_defaults

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def running(tmp_path):
    """An agent whose loop runs in a thread (the metrics ask that thread)."""
    agent, _, _ = make_agent(tmp_path)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    yield agent
    agent.request_stop()
    thread.join(5)


def scrape(port: int, path: str = "/metrics") -> str:
    url = f"http://127.0.0.1:{port}{path}"
    return urllib.request.urlopen(url, timeout=5).read().decode()


def test_metrics_endpoint_serves_the_agents_counters(running):
    port = free_port()
    serve_metrics(running, "127.0.0.1", port)
    running.stats.hook_events = 7
    body = scrape(port)
    assert "meshroute_hook_events_total 7.0" in body
    assert "meshroute_local_claims 0.0" in body
    assert "meshroute_broker_connected 1.0" in body
    assert f'meshroute_build_info{{version="{__version__}"}} 1.0' in body
    assert "process_resident_memory_bytes" in body and "python_info" in body
    assert 'meshroute_apply_seconds_bucket{le="+Inf"}' in body
    assert "meshroute_agent_responsive 1.0" in body


def test_metrics_other_paths_are_404(running):
    port = free_port()
    serve_metrics(running, "127.0.0.1", port)
    with pytest.raises(urllib.error.HTTPError) as err:
        scrape(port, "/favicon.ico")
    assert err.value.code == 404
    assert "meshroute_peers" in scrape(port, "/metrics?x=1")


def test_a_stuck_agent_loop_serves_the_last_values_marked_unresponsive(tmp_path):
    agent, _, _ = make_agent(tmp_path)  # its loop never runs: nobody answers
    collector = AgentCollector(agent, timeout=0.2)
    families = {f.name: f for f in collector.collect()}
    assert families["meshroute_agent_responsive"].samples[0].value == 0


def test_the_scrape_reads_a_snapshot_built_on_the_agent_thread(running):
    threads = []
    real = metrics.take_snapshot

    def spy(agent):
        threads.append(threading.current_thread().name)
        return real(agent)

    metrics.take_snapshot = spy
    try:
        list(AgentCollector(running).collect())
    finally:
        metrics.take_snapshot = real
    assert threads == [running_thread_name(running)]


def running_thread_name(agent) -> str:
    [thread] = [t for t in threading.enumerate() if t.name != "MainThread"
                and getattr(t, "_target", None) == agent.run]  # fmt: skip
    return thread.name


def test_a_peer_that_went_away_stays_in_the_metrics_as_down(tmp_path):
    broker = MemoryBroker(threaded=True)
    clock = SystemClock()

    def agent_named(name: str, hop: str) -> Agent:
        settings = CoreSettings(name=name, hold_time=15, announce_interval=2, sync_timeout=0.1,
                                client_networks=(), next_hop=ipaddress.ip_address(hop))  # fmt: skip
        return Agent(AgentCore(settings, epoch=1), bus=MemoryBus(broker, name),
                     dataplane=FakeDataplane(), status_source=list, clock=clock,
                     settings=LoopSettings(tick=0.02))  # fmt: skip

    a, b = agent_named("a", "10.200.0.1"), agent_named("b", "10.200.0.2")
    threads = [threading.Thread(target=x.run, daemon=True) for x in (a, b)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: "b" in a.core.table.peers)
        assert _peer_up(a) == {"b": 1}
        b.leave()
        threads[1].join(5)
        wait_until(lambda: "b" not in a.core.table.peers)
        assert _peer_up(a) == {"b": 0}
        assert a.query("peers")["peers"][0]["state"] == "down (goodbye)"
    finally:
        a.request_stop()
        threads[0].join(5)


def _peer_up(agent) -> dict[str, float]:
    families = {f.name: f for f in AgentCollector(agent).collect()}
    return {s.labels["peer"]: s.value for s in families["meshroute_peer_up"].samples}


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_sigterm_stops_without_goodbye_and_leave_says_goodbye(tmp_path):
    agent, _, _ = make_agent(tmp_path)
    restart = _install_signals(agent, lambda: None)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert agent._stop.is_set() and not agent.left
        assert _exit_code(agent, "vpnsrvA", restart) == 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
    leaver, _, _ = make_agent(tmp_path)
    assert control_answer(leaver)("leave")["leaving"] and leaver.left
    assert _exit_code(leaver, "vpnsrvA", {"requested": False}) == 0


def test_sighup_passes_new_client_networks_and_forces_a_full_resync(tmp_path):
    agent, config, path = make_agent(tmp_path)
    reload = _reloader(agent, config, str(path), None)
    agent.mirror.full_resync_needed = False
    path.write_text(CONF.format(hold=15).replace("10.100.100.0/24", "10.100.100.0/25"))
    reload()
    assert agent.core.table.client_networks == (ipaddress.ip_network("10.100.100.0/25"),)
    assert agent.core.settings.client_networks == agent.core.table.client_networks
    assert agent.mirror.full_resync_needed


DOCS = pathlib.Path(__file__).parents[2] / "docs" / "metrics.md"
DASHBOARD = pathlib.Path(__file__).parents[2] / "deploy" / "grafana" / "meshroute.json"


def exported_names(agent) -> set[str]:
    return {f.name for f in AgentCollector(agent).collect()}


def test_every_metric_is_documented(running):
    docs = DOCS.read_text()
    for name in exported_names(running):
        assert f"`{name}" in docs, f"{name} is not in docs/metrics.md"


def test_the_dashboard_queries_only_metrics_that_exist(running):
    import json
    import re

    dashboard = json.loads(DASHBOARD.read_text())
    known = exported_names(running)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert exprs
    for expr in exprs:
        for name in re.findall(r"\b(meshroute_\w+?)(?:_bucket|_total)?\b", expr):
            base = name.removesuffix("_bucket").removesuffix("_total")
            assert base in known, f"{base} in {expr!r} is no metric"


def test_scrapes_never_fail_while_peers_churn(running):
    """5 of 3,000 scrapes failed when the collector iterated the live table."""
    from meshroute.core.claimset import PeerView

    table = running.core.table
    stop = threading.Event()

    def churn() -> None:
        def flip() -> None:  # on the agent thread, as every table change is
            for i in range(200):
                name = f"p{i}"
                if name in table.peers:
                    del table.peers[name]
                else:
                    table.peers[name] = PeerView(name, epoch=1, last_seen=0.0)

        while not stop.is_set():
            running.call_soon(flip)
            time.sleep(0.0005)

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    collector = AgentCollector(running)
    failures = 0
    try:
        for _ in range(1000):
            try:
                list(collector.collect())
            except RuntimeError:
                failures += 1
    finally:
        stop.set()
        churner.join(5)
        table.peers.clear()
    assert failures == 0
