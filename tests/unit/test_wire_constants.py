"""wire.py copies pyroute2's netlink constants (importing pyroute2 loads the whole
library); these must stay the values pyroute2 and the kernel use."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pyroute2 import netlink, netns
from pyroute2.netlink import rtnl

from meshroute.dataplane import wire

NETLINK_NAMES = [
    "NLMSG_NOOP",
    "NLMSG_ERROR",
    "NLMSG_DONE",
    "NLM_F_REQUEST",
    "NLM_F_ACK",
    "NLM_F_DUMP_INTR",
    "NLM_F_REPLACE",
    "NLM_F_EXCL",
    "NLM_F_CREATE",
    "NLM_F_DUMP",
    "NLM_F_CAPPED",
    "NLM_F_ACK_TLVS",
    "SOL_NETLINK",
    "NETLINK_EXT_ACK",
    "NETLINK_GET_STRICT_CHK",
]


@pytest.mark.parametrize("name", NETLINK_NAMES)
def test_netlink_constant_is_pyroute2s(name: str) -> None:
    assert getattr(wire, name) == getattr(netlink, name)


@pytest.mark.parametrize("name", ["RTM_NEWROUTE", "RTM_DELROUTE", "RTM_GETROUTE"])
def test_rtnl_constant_is_pyroute2s(name: str) -> None:
    assert getattr(wire, name) == getattr(rtnl, name)


def test_netns_constants_are_pyroute2s() -> None:
    assert wire.CLONE_NEWNET == netns.CLONE_NEWNET
    assert wire.NETNS_RUN_DIR == netns.NETNS_RUN_DIR


def test_the_agents_dataplane_imports_no_pyroute2() -> None:
    code = (
        "import sys, meshroute.dataplane.netlink, meshroute.dataplane.netinfo\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyroute2'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_setns_names_a_missing_namespace(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(OSError, match="netns"):
        wire._socket_in_netns(os.path.join(tmp_path, "absent"))
