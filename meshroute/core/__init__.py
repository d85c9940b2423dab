"""The pure protocol: who wins an address, and what goes on the wire.

Value types (``model``), the hybrid logical clock (``hlc``), one agent's claims
(``claimset``, ``local``), everyone's claims and the winner rule (``table``), the
protocol state machine (``engine``), bus messages as bytes (``codec``) and the plan
of route changes against the kernel's owned routes (``reconcile``).

Invariant (an import-linter contract in setup.cfg): nothing here does I/O or
imports pika, pyroute2, click, socket or threading, or any other part of meshroute;
time comes in through an injected :class:`~meshroute.core.clock.Clock`.
"""
