"""The lab's OpenVPN backbone configs (pure): who is hub, who gets an iroute, addresses."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshroute.lab import backbone
from meshroute.lab.pki import CertKey, Pki
from meshroute.lab.topology import make_plan


def fake_pki(names: list[str]) -> Pki:
    d = Path("/x/pki-bb")
    ck = {n: CertKey(n, d / f"{n}.crt", d / f"{n}.key") for n in names}
    return Pki(d, d / "ca.crt", d / "ca.key", servers={"s1": ck["s1"]},
               clients={n: ck[n] for n in names if n != "s1"},
               tls_crypt_key=d / "tls-crypt.key")  # fmt: skip


def test_members_are_every_server_then_every_broker_with_backbone_addresses() -> None:
    members = backbone.members(make_plan("mrx", 3, 0, brokers=2))
    assert [m.name for m in members] == ["s1", "s2", "s3", "b1", "b2"]
    assert [str(m.address) for m in members][-2:] == ["10.200.200.254", "10.200.200.253"]
    assert [str(m.underlay) for m in members] == [
        "198.18.0.1", "198.18.0.2", "198.18.0.3", "198.18.2.254", "198.18.2.253"]  # fmt: skip
    assert [m.is_server for m in members] == [True, True, True, False, False]


def test_tap_hub_switches_and_gives_no_iroute() -> None:
    plan = make_plan("mrx", 3, 0)
    hub, s2, *_ = backbone.members(plan)
    text = backbone.render_hub("openvpn", hub, fake_pki(["s1", "s2", "s3", "broker"]), Path("/c"))
    lines = text.splitlines()
    assert {"mode server", "dev bb0", "dev-type tap", "client-to-client", "ccd-exclusive",
            "ifconfig 10.200.200.1 255.255.255.0", "local 198.18.0.1"} <= set(lines)  # fmt: skip
    assert "iroute" not in backbone.render_ccd("openvpn", s2)
    assert "ifconfig-push 10.200.200.2 255.255.255.0" in backbone.render_ccd("openvpn", s2)


def test_tun_hub_gives_servers_the_client_networks_as_iroute_but_not_the_broker() -> None:
    hub, s2, broker = backbone.members(make_plan("mrx", 2, 0))
    text = backbone.render_hub("openvpn-tun", hub, fake_pki(["s1", "s2", "broker"]), Path("/c"))
    assert "dev-type tun" in text and "client-to-client" not in text
    assert "iroute 10.100.100.0 255.255.255.0" in backbone.render_ccd("openvpn-tun", s2)
    assert "iroute-ipv6 fd00:100::/64" in backbone.render_ccd("openvpn-tun", s2)
    assert "iroute" not in backbone.render_ccd("openvpn-tun", broker)
    assert "iroute" not in backbone.render_ccd("openvpn-tun", s2, iroutes=False)


def test_member_connects_to_the_hub_with_its_own_certificate() -> None:
    hub, s2, _ = backbone.members(make_plan("mrx", 2, 0))
    text = backbone.render_member("openvpn", s2, hub, fake_pki(["s1", "s2", "broker"]))
    assert "remote 198.18.0.1 11940" in text and "cert /x/pki-bb/s2.crt" in text
    assert "dev-type tap" in text and "pull" in text.splitlines()


def test_unknown_form_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="bridge, openvpn, openvpn-tun"):
        backbone.check_form("wireguard")


def test_p2p_tunnel_sides_mirror_each_other_and_share_one_local_address() -> None:
    from meshroute.lab import backbone_p2p as p2p

    nodes = backbone.members(make_plan("mrx", 3, 0))
    s1, s2, s3, _ = nodes
    names = [m.name for m in nodes]
    d = Path("/x/pki-bb")
    pki = Pki(d, d / "ca.crt", d / "ca.key",
              servers={n: CertKey(n, d / f"{n}.crt", d / f"{n}.key") for n in names},
              clients={p2p.client_name(n): CertKey(n, d / f"{n}-c.crt", d / f"{n}-c.key")
                       for n in names})  # fmt: skip
    positions = {n: k for k, n in enumerate(names)}
    up = Path("/x/up.sh")
    a = p2p.render_side(s1, s2, positions, True, pki, up).splitlines()
    b = p2p.render_side(s2, s1, positions, False, pki, up).splitlines()
    c = p2p.render_side(s1, s3, positions, True, pki, up).splitlines()
    assert {
        "dev bb-s2",
        "tls-server",
        "lport 11942",
        "rport 11941",
        "ifconfig 10.200.200.1 10.200.200.2",
        "verify-x509-name s2-c name",
    } <= set(a)
    assert {
        "dev bb-s1",
        "tls-client",
        "lport 11941",
        "rport 11942",
        "ifconfig 10.200.200.2 10.200.200.1",
        "verify-x509-name s1 name",
    } <= set(b)
    assert "ifconfig 10.200.200.1 10.200.200.3" in c and "lport 11943" in c  # same local
    assert not any(line.startswith("mode") for line in a + b)  # point-to-point


def test_deploys_p2p_up_script_is_the_labs() -> None:
    from meshroute.lab.backbone_p2p import UP_SCRIPT

    deploy = Path(__file__).resolve().parents[2] / "deploy" / "backbone" / "openvpn-p2p-up.sh"
    assert deploy.read_text() == UP_SCRIPT
