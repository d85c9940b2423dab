"""TLS to the broker: AmqpBus and a real agent on a TLS-only-for-us RabbitMQ node.

The module starts its own node (the session's has no TLS listener) with an AMQPS
listener that requires a client certificate (``verify_peer`` +
``fail_if_no_peer_cert``). The broker's certificate is valid for ``localhost``
only (no IP SAN), so the hostname check can be seen failing for ``127.0.0.1``.

A refusal is proven by the bus logging at least two failed attempts (so it did
retry, and is not just slow) with the TLS reason, and never reporting a connection.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from meshroute.bus.amqp import AmqpBus, TlsSettings
from meshroute.lab.pki import Pki, make_pki
from meshroute.lab.rabbitmq import NodeTls, RabbitNode, free_port
from tests.fakes import poll
from tests.integration.conftest import Recorder
from tests.integration.mesh import AgentProc, Mesh

pytestmark = pytest.mark.integration

EXCHANGE = "meshroute"
BROKER_HOST = "localhost"  # the only name in the broker's certificate


@dataclass
class TlsBroker:
    node: RabbitNode
    pki: Pki  # the broker's CA: broker (server) and agent (client) certificates
    other: Pki  # an unrelated CA with a client certificate "stranger"

    def good_tls(self, **overrides) -> TlsSettings:
        agent = self.pki.clients["agent"]
        settings = {"ca_file": self.pki.ca_cert, "cert_file": agent.cert, "key_file": agent.key}
        return TlsSettings(**{**settings, **overrides})

    def add_user(self, name: str, password: str, host: str = BROKER_HOST) -> str:
        self.node.add_agent(name, password, EXCHANGE)
        return self.node.url_for(name, password, host, tls=True)

    def connections(self) -> dict[str, list[str]]:
        """user -> [ssl, peer certificate subject] of every connection, by rabbitmqctl."""
        out = self.node.ctl("list_connections", "user", "ssl", "peer_cert_subject")
        return {user: rest for user, *rest in (line.split("\t") for line in out.splitlines())}


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory) -> Iterator[TlsBroker]:
    tmp = tmp_path_factory.mktemp("tls")
    pki = make_pki(
        tmp / "pki", ["broker"], ["agent"], tls_crypt=False, san={"broker": [BROKER_HOST]}
    )
    other = make_pki(tmp / "other", [], ["stranger"], tls_crypt=False)
    broker = pki.servers["broker"]
    node = RabbitNode(
        tmp / "node",
        node_name=f"mrt-tls-{os.getpid()}",
        port=free_port(),
        tls=NodeTls(free_port(), pki.ca_cert, broker.cert, broker.key),
    )
    try:
        node.start(timeout=60)
        yield TlsBroker(node, pki, other)
    finally:
        node.stop()


@pytest.fixture
def buses(tls_broker: TlsBroker) -> Iterator[Callable[..., tuple[AmqpBus, Recorder]]]:
    """Start AmqpBus instances (a user of their own each); stops them all at the end."""
    started: list[AmqpBus] = []

    def start(name: str, tls: TlsSettings, host: str = BROKER_HOST) -> tuple[AmqpBus, Recorder]:
        url = tls_broker.add_user(name, f"pw-{name}", host)
        bus, rec = AmqpBus([url], name, EXCHANGE, tls=tls), Recorder()
        started.append(bus)
        bus.start(rec)
        return bus, rec

    yield start
    for bus in started:
        bus.stop(2)


def test_buses_exchange_messages_over_tls_with_client_certificates(tls_broker, buses):
    a, a_rec = buses("tls-a", tls_broker.good_tls())
    _, b_rec = buses("tls-b", tls_broker.good_tls())
    for rec in (a_rec, b_rec):
        rec.wait_for(lambda r: r.connection == [True])
    a.publish(b"over-tls", msg_type="delta", message_id="m1")
    for rec in (a_rec, b_rec):
        rec.wait_for(lambda r: b"over-tls" in r.bodies)
    assert b_rec.envelopes[0].user_id == "tls-a"
    # The broker's own view: both connections are TLS and presented our client cert.
    connections = tls_broker.connections()
    for user in ("tls-a", "tls-b"):
        assert connections[user] == ["true", "CN=agent"]


def test_server_hostname_names_the_certificate_to_expect(tls_broker, buses):
    """URL host 127.0.0.1 is not in the certificate; server_hostname overrides the check."""
    _, rec = buses("tls-ip", tls_broker.good_tls(server_hostname=BROKER_HOST), host="127.0.0.1")
    rec.wait_for(lambda r: r.connection == [True])


REFUSALS = {  # case -> (URL host, what the logs must give as the reason)
    "no-client-cert": (BROKER_HOST, "CERTIFICATE_REQUIRED"),
    "trusts-another-ca": (BROKER_HOST, "CERTIFICATE_VERIFY_FAILED"),
    "client-cert-from-another-ca": (BROKER_HOST, "UNKNOWN_CA"),
    "ip-not-in-broker-cert": ("127.0.0.1", "IP address mismatch"),
}


def _refused_tls(t: TlsBroker, case: str) -> TlsSettings:
    stranger = t.other.clients["stranger"]
    return {
        "no-client-cert": TlsSettings(ca_file=t.pki.ca_cert),
        "trusts-another-ca": t.good_tls(ca_file=t.other.ca_cert),
        "client-cert-from-another-ca": t.good_tls(cert_file=stranger.cert, key_file=stranger.key),
        "ip-not-in-broker-cert": t.good_tls(),  # and no server_hostname
    }[case]


@pytest.mark.parametrize("case", list(REFUSALS))
def test_broker_connection_is_refused(tls_broker, buses, caplog, case):
    caplog.set_level(logging.INFO)
    host, reason = REFUSALS[case]
    name = f"tls-refused-{case}"
    bus, rec = buses(name, _refused_tls(tls_broker, case), host=host)

    def failures() -> int:
        return sum(f"{name}: cannot connect" in r.getMessage() for r in list(caplog.records))

    poll(lambda: failures() >= 2, 10, f"{name} to be refused twice")
    assert rec.connection == [] and not bus.connected
    assert reason in caplog.text
    assert name not in tls_broker.connections()


def test_agent_process_connects_over_tls_and_never_logs_its_password(tls_broker, tmp_path):
    name = "tls-agent"
    password = secrets.token_urlsafe(12)
    url = tls_broker.add_user(name, password)
    agent_cert = tls_broker.pki.clients["agent"]
    settings = {
        "announce_interval": "0.5",
        "hold_time": "3",
        "status_poll_interval": "1",
        "sync_timeout": "1",
        "tls_ca_file": str(tls_broker.pki.ca_cert),
        "tls_cert_file": str(agent_cert.cert),
        "tls_key_file": str(agent_cert.key),
    }
    mesh = Mesh(None, tmp_path, EXCHANGE, settings)
    netns = f"mrt-tls{os.getpid()}-ag"
    agent = AgentProc(name, 1, netns, tmp_path, url, EXCHANGE, settings)
    mesh.agents[name] = agent  # so that close() stops it and deletes its netns
    listener, listener_rec = None, Recorder()
    try:
        mesh._make_netns(netns, 1)  # the agent's dataplane lives there, not in ours
        agent.serve_openvpn()
        agent.start()
        agent.wait_ready()
        health = agent.query("health")
        assert health is not None and health["broker_connected"] is True
        assert tls_broker.connections()[name] == ["true", "CN=agent"]
        # Its announcements reach a peer over TLS too.
        peer_url = tls_broker.add_user("tls-peer", "pw-peer")
        listener = AmqpBus([peer_url], "tls-peer", EXCHANGE, tls=tls_broker.good_tls())
        listener.start(listener_rec)
        listener_rec.wait_for(lambda r: any(e.user_id == name for e in r.envelopes))
    finally:
        if listener is not None:
            listener.stop(2)
        mesh.close()
        print(mesh.logs())  # pytest shows it when the test failed
    log_text = agent.log.read_text(errors="replace")
    assert "amqps://tls-agent:****@localhost" in log_text  # it does log the URL, masked
    assert password not in log_text
