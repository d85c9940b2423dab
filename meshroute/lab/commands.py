"""``meshroute lab``: N real OpenVPN servers, clients, a broker and agents on one box."""

from __future__ import annotations

import click


@click.group()
def lab() -> None:
    """The one-box lab (root): network namespaces, real OpenVPN, RabbitMQ and agents."""
