"""The agent: the loop that wires OpenVPN, the bus and the dataplane to the core.

``loop`` (the agent's one thread), ``daemon`` (builds the real agent from a config),
and what reads a running agent, through ``readout`` (a read-only window): ``views``
(the control socket's answers) and ``metrics`` (Prometheus); ``incarnation`` (what
survives a restart), ``sdnotify``, ``logformat``.

Invariant (setup.cfg): the agent imports the edges, the config and the core; never
the CLI or the lab.
"""
