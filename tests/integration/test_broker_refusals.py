"""A broker that refuses the agent (wrong password, no access to the vhost) is said
once at ERROR, not at INFO on every retry forever; a network problem stays INFO."""

from __future__ import annotations

import logging

import pytest

from meshroute.bus.amqp import AmqpBus
from tests.fakes import poll
from tests.integration.conftest import EXCHANGE, Broker, Recorder

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("fault", ["password", "vhost"])
def test_a_refusal_is_one_error_line_then_quiet_retries(rabbit: Broker, caplog, fault):
    rabbit.require_node()
    name = rabbit.unique(f"refused-{fault}")
    url = rabbit.agent_url(name)
    url = url.replace(f"pw-{name}", "wrong") if fault == "password" else (
        url.rsplit("/", 1)[0] + "/no-such-vhost")  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="meshroute.bus.amqp")
    bus = AmqpBus([url], name, EXCHANGE)
    bus.start(Recorder())
    try:

        def attempts() -> list[logging.LogRecord]:
            return [r for r in list(caplog.records) if f"{name}: cannot connect" in r.getMessage()]

        poll(lambda: len(attempts()) >= 3, 20, f"{name} to be refused three times")
        levels = [r.levelno for r in attempts()]
        assert levels[0] == logging.ERROR and set(levels[1:]) == {logging.DEBUG}
        assert not bus.connected
    finally:
        bus.stop(2)
