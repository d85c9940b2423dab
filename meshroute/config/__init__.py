"""Configuration: one frozen dataclass, loaded from file -> environment -> overrides.

``schema`` (the :class:`~meshroute.config.schema.Config` keys, loading, checks),
``sources`` (reading the file, the environment and overrides), ``values`` (one
parser per kind of value), ``access`` (can the agent's user read its files).

Invariant (setup.cfg): below the agent and the control socket, above the edges:
it may name the edges' types and read the host through ``dataplane/netinfo.py``
(interface defaults, ``meshroute check``); it never imports the agent, the CLI or
the lab, and changes nothing on the host.
"""
