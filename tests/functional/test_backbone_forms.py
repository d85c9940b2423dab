"""Which OpenVPN backbones carry meshroute's routes: measured on real OpenVPN.

Three servers s1..s3 on the lab's OpenVPN backbone (hub on s1, see
meshroute/lab/backbone.py), no broker, no agents. Each server holds a stand-in
client address (on lo: 10.100.100.64+K, fd00:100::64+K) and the host
routes meshroute would install: every other server's stand-in ``via`` that server's
backbone address, with protocol 201. Then every server pings every other stand-in
from its own, once per family. A backbone that forwards by next hop delivers all
six pairs (the tap hub, the point-to-point mesh); an OpenVPN tun server forwards
by the packet's inner addresses and cannot (docs/backbone.md).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from meshroute.lab import backbone, netns, procs
from meshroute.lab.lab import Lab
from meshroute.lab.observe import ping_once
from meshroute.lab.topology import VPN4, VPN6, LabPlan, ServerPlan, make_plan

pytestmark = pytest.mark.functional

STAND_IN = 64  # the stand-in client of server K is .64+K (the lab's sticky range)


def stand_in(k: int, family: int) -> str:
    net = VPN4 if family == 4 else VPN6
    return str(net.network_address + STAND_IN + k)


@contextmanager
def backbone_only(tag: str, form: str, iroutes: bool = True) -> Iterator[LabPlan]:
    """Three servers on ``form``, stand-in clients and meshroute-like routes."""
    prefix = f"mrf{os.getpid()}{tag}"
    plan = make_plan(prefix, servers=3, clients=0)
    with tempfile.TemporaryDirectory(prefix="mr-bb-") as tmp:
        lab = Lab(prefix, root=Path(tmp))
        root = lab.paths.root
        try:
            netns.create_namespaces(plan)
            netns.build_network(plan, backbone_bridge=False)
            backbone.wire_underlay(plan)
            backbone.start(form, plan, root, lab.paths.logs,
                           lambda ns, role, argv, log: procs.spawn(ns, argv, log),
                           iroutes=iroutes)  # fmt: skip
            for server in plan.servers:
                netns.batch(server.netns, _stand_in_commands(plan, server.index))
            yield plan
        finally:
            lab.down()  # every process inside the namespaces, the namespaces, the files


def _stand_in_commands(plan: LabPlan, k: int) -> list[str]:
    commands = [  # on lo: no dummy module needed
        f"addr add {stand_in(k, 4)}/32 dev lo",
        f"addr add {stand_in(k, 6)}/128 dev lo nodad",
    ]
    for peer in plan.servers:
        if peer.index != k:
            commands += [
                f"route add {stand_in(peer.index, 4)}/32 via {peer.backbone} proto 201",
                f"route add {stand_in(peer.index, 6)}/128 via {peer.backbone6} proto 201",
            ]
    return commands


def delivered(plan: LabPlan, family: int) -> dict[tuple[str, str], bool]:
    """(from, to) -> one ping from one stand-in to the other came back (pairs in
    parallel: a lost ping costs its 1 s timeout)."""
    pairs = [(s, d) for s in plan.servers for d in plan.servers if s is not d]

    def one(pair: tuple[ServerPlan, ServerPlan]) -> bool:
        src, dst = pair
        return _ping_from(src.netns, stand_in(src.index, family), stand_in(dst.index, family))

    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        oks = list(pool.map(one, pairs))
    return {(s.name, d.name): ok for (s, d), ok in zip(pairs, oks, strict=True)}


def _ping_from(ns: str, source: str, address: str) -> bool:
    argv = ["ip", "netns", "exec", ns, "ping", "-n", "-c1", "-W1", "-I", source, address]
    return subprocess.run(argv, capture_output=True, check=False).returncode == 0


@pytest.mark.parametrize("form", ["openvpn", "openvpn-p2p"])
def test_tap_hub_and_p2p_mesh_forward_by_next_hop_so_every_pair_is_delivered(form: str) -> None:
    with backbone_only(form[-1], form) as plan:
        assert ping_once(plan.servers[1].netns, str(plan.servers[2].backbone))[0]
        for family in (4, 6):
            results = delivered(plan, family)
            assert all(results.values()), (family, results)


def test_tun_hub_without_iroute_drops_every_packet_that_is_not_a_peers_own() -> None:
    # The backbone itself works (peer to peer), meshroute's next hops are right,
    # yet no client packet crosses: the hub drops a packet from a peer whose source
    # is not that peer's address (OpenVPN's source check), and one toward an address
    # no peer has as iroute.
    with backbone_only("n", "openvpn-tun", iroutes=False) as plan:
        assert ping_once(plan.servers[1].netns, str(plan.servers[2].backbone))[0]
        for family in (4, 6):
            results = delivered(plan, family)
            assert not any(results.values()), results


def test_tun_hub_with_iroute_at_every_peer_follows_one_peer_not_the_next_hop() -> None:
    # Both s2 and s3 have iroute for the client networks: the hub sends every such
    # packet to the one that holds it (the last to connect), whatever next hop the
    # sender's kernel chose; the other one's stand-in is unreachable.
    with backbone_only("i", "openvpn-tun") as plan:
        for family in (4, 6):
            results = delivered(plan, family)
            failed = [pair for pair, ok in results.items() if not ok]
            assert failed, results
            # Every failed pair involves the same peer, s2 or s3: the one without
            # the hub's route for the client networks.
            common = set.intersection(*(set(pair) for pair in failed))
            assert len(common) == 1 and common != {"s1"}, results
