"""meshroute's OpenVPN plugin: the C source here, and where its built ``.so`` is.

``meshroute-plugin.c`` (built by this directory's Makefile; ``.ci/install`` runs
``make`` here) sends OpenVPN's learn-address, client-connect and client-disconnect
events to the agent's hook socket from inside OpenVPN's process, in the datagram
format of :mod:`meshroute.openvpn.hook` (see docs/openvpn.md). This module only
finds the built file; it never builds anything.

Lookup order of :func:`find_plugin`: this package's directory (``make`` builds in
place: an editable install finds it here), then the ``make install`` places
``/usr/local/lib/meshroute`` and ``/usr/lib/meshroute``.
"""

from __future__ import annotations

from pathlib import Path

PLUGIN_FILE = "meshroute-plugin.so"
SOURCE_DIR = Path(__file__).resolve().parent
INSTALL_DIRS = (SOURCE_DIR, Path("/usr/local/lib/meshroute"), Path("/usr/lib/meshroute"))


def find_plugin(directories: tuple[Path, ...] = INSTALL_DIRS) -> Path | None:
    """The first built ``meshroute-plugin.so`` in ``directories``, or None."""
    for directory in directories:
        candidate = directory / PLUGIN_FILE
        if candidate.is_file():
            return candidate
    return None
