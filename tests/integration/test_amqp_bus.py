"""AmqpBus against a real RabbitMQ node: delivery, identity, permissions, outages."""

from __future__ import annotations

import threading
import time

import pika
import pika.exceptions
import pytest

from meshroute.bus.amqp import AmqpBus, queue_name
from meshroute.core.codec import decode, encode
from meshroute.core.model import Goodbye, Header
from meshroute.lab.rabbitmq import agent_permissions, free_port

from .conftest import Recorder

pytestmark = pytest.mark.integration


def test_fanout_reaches_every_agent_and_direct_only_one(agents):
    a, b, c = agents(), agents(), agents()
    a.send(b"fan-1")
    a.send(b"direct-b", to=b.name)
    a.send(b"fan-2")
    for agent in (a, b, c):
        agent.rec.wait_for(lambda r: b"fan-2" in r.bodies)
    b.rec.wait_for(lambda r: b"direct-b" in r.bodies)
    assert b.rec.bodies == [b"fan-1", b"direct-b", b"fan-2"]  # publish order kept
    assert a.rec.bodies == c.rec.bodies == [b"fan-1", b"fan-2"]
    envelope = b.rec.envelopes[1]
    assert (envelope.user_id, envelope.msg_type, envelope.message_id) == (
        a.name,
        "delta",
        "direct-b",
    )
    assert b.rec.threads == {f"meshroute-amqp-{b.name}"}


def test_codec_message_round_trips_with_broker_identity(agents):
    a, b = agents(), agents()
    a.bus.publish(
        encode(Goodbye(Header(a.name, 5, 1))), msg_type="goodbye", message_id="g1", to=b.name
    )
    b.rec.wait_for(lambda r: len(r.envelopes) == 1)
    envelope = b.rec.envelopes[0]
    assert decode(envelope.body, user_id=envelope.user_id) == Goodbye(Header(a.name, 5, 1))


def test_queue_and_connection_are_named_after_the_agent(rabbit, agents):
    node = rabbit.require_node()
    a = agents("named")
    queues = node.ctl("list_queues", "name", "durable", "exclusive", "arguments")
    line = next(q for q in queues.splitlines() if q.startswith(queue_name(a.name) + "\t"))
    # exclusive: it dies with the connection or its node (docs/reliability.md)
    assert "\tfalse\ttrue\t" in line and "x-message-ttl" in line
    connections = node.ctl("list_connections", "user", "client_properties")
    mine = [c for c in connections.splitlines() if c.startswith(a.name + "\t")]
    assert len(mine) == 1 and f'"meshroute agent {a.name}"' in mine[0]


def test_broker_refuses_a_forged_user_id(rabbit, agents):
    rabbit.require_node()
    a, b = agents("forger"), agents("victim")
    with pika.BlockingConnection(pika.URLParameters(a.url)) as conn:
        channel = conn.channel()
        channel.confirm_delivery()
        forged = pika.BasicProperties(user_id=b.name, type="delta")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.basic_publish("meshroute", "", b"forged", forged)
    assert info.value.reply_code == 406 and "user_id" in info.value.reply_text
    a.send(b"marker")  # would queue behind the forged one, had it been routed
    b.rec.wait_for(lambda r: b"marker" in r.bodies)
    assert b"forged" not in b.rec.bodies


def test_agent_cannot_read_or_create_other_queues(rabbit, agents):
    rabbit.require_node()
    a, b = agents("nosy"), agents("private")
    with pika.BlockingConnection(pika.URLParameters(a.url)) as conn:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            conn.channel().basic_consume(queue_name(b.name), lambda *args: None)
        assert info.value.reply_code == 403
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            conn.channel().queue_declare("meshroute.someone-else")
        assert info.value.reply_code == 403


def test_publish_from_the_handler_thread_does_not_deadlock(agents):
    a, b = agents(), agents()
    b.rec.on_body = lambda body: body == b"ping" and b.send(b"pong", to=a.name)
    a.send(b"ping", to=b.name)
    a.rec.wait_for(lambda r: r.bodies == [b"pong"], timeout=5)


def test_stop_flushes_a_final_goodbye(agents):
    a, b = agents(), agents()
    a.send(b"bye", msg_type="goodbye")
    started = time.monotonic()
    a.bus.stop(5)
    assert time.monotonic() - started < 2
    assert not a.bus._thread.is_alive() and not a.bus.connected
    b.rec.wait_for(lambda r: b"bye" in r.bodies, timeout=5)
    assert a.rec.connection == [True]  # a clean stop reports no outage


def test_many_messages_arrive_complete_and_in_order(agents):
    a, b = agents(), agents()
    count = 5000
    started = time.monotonic()
    for i in range(count):
        a.send(b"%d" % i, to=b.name)
    b.rec.wait_for(lambda r: len(r.envelopes) >= count, timeout=20)
    elapsed = time.monotonic() - started
    assert b.rec.bodies == [b"%d" % i for i in range(count)]
    print(f"{count} confirmed publishes delivered in {elapsed:.3f}s")


def test_broker_restart_reconnects_and_delivers_the_outbox(rabbit, agents):
    node = rabbit.require_node()
    a, b = agents("restart"), agents("restart")
    a.send(b"before")
    b.rec.wait_for(lambda r: b"before" in r.bodies)
    started = time.monotonic()
    node.stop_app()
    for agent in (a, b):
        agent.rec.wait_for(lambda r: r.connection == [True, False])
    a.send(b"during-1")
    a.send(b"beat-old", msg_type="heartbeat")
    a.send(b"during-2")
    a.send(b"beat-new", msg_type="heartbeat")
    assert not a.bus.connected
    threading.Thread(target=node.start_app, daemon=True).start()
    for agent in (a, b):
        agent.rec.wait_for(lambda r: r.connection == [True, False, True], timeout=20)
    # a's queue is made again before its outbox goes out, so a hears all of it; b's
    # queue may come back later (the agent asks for snapshots on every reconnect).
    a.rec.wait_for(lambda r: b"beat-new" in r.bodies, timeout=10)
    assert a.rec.bodies == [b"before", b"during-1", b"during-2", b"beat-new"]
    assert time.monotonic() - started < 30


def test_logs_name_the_broker_but_never_the_password(agents, caplog):
    caplog.set_level("INFO", logger="meshroute.bus.amqp")
    a = agents("logged")
    a.bus.stop(2)
    text = caplog.text
    assert f"{a.name}: consuming meshroute.{a.name}" in text
    assert f"{a.name}:****@" in text and f"pw-{a.name}" not in text


def test_rotates_to_the_next_url_and_stops_promptly_when_none_answers(rabbit):
    name = rabbit.unique("failover")
    good = rabbit.agent_url(name)
    dead = f"amqp://{name}:x@127.0.0.1:{free_port()}/%2F"
    rec = Recorder()
    bus = AmqpBus([dead, good], name)
    bus.start(rec)
    try:
        rec.wait_for(lambda r: r.connection == [True], timeout=5)
    finally:
        bus.stop(2)
    lonely, rec = AmqpBus([dead], rabbit.unique("lonely")), Recorder()
    lonely.start(rec)
    lonely.publish(b"lost", msg_type="goodbye", message_id="x")
    time.sleep(0.5)  # let it fail and back off at least once
    started = time.monotonic()
    lonely.stop(2)
    assert time.monotonic() - started < 1.5
    assert not lonely._thread.is_alive() and rec.connection == []


def test_agent_without_configure_on_the_exchange_uses_a_passive_declare(rabbit, agents):
    node = rabbit.require_node()
    agents()  # the exchange exists
    name = rabbit.unique("strict")
    perms = agent_permissions(name)
    node.add_user(name, "pw", f"^meshroute\\.{name}$", perms.write, perms.read)
    url = node.url_for(name, "pw")
    rec, bus = Recorder(), AmqpBus([url], name, declare_exchange=False)
    bus.start(rec)
    try:
        rec.wait_for(lambda r: r.connection == [True], timeout=5)
        bus.publish(b"hello", msg_type="delta", message_id="h")
        rec.wait_for(lambda r: r.bodies == [b"hello"], timeout=5)
    finally:
        bus.stop(2)
    with pika.BlockingConnection(pika.URLParameters(url)) as conn:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            conn.channel().exchange_delete("meshroute")
        assert info.value.reply_code == 403
