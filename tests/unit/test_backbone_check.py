"""``meshroute check --backbone-openvpn``: which OpenVPN backbones are flagged (pure part).

The rule (netinfo.backbone_warnings) follows what tests/functional/
test_backbone_forms.py measures on real OpenVPN: a tun server carries meshroute's
routes only with exactly one peer server whose iroute covers the client networks.
"""

from __future__ import annotations

from pathlib import Path

from meshroute.dataplane.netinfo import backbone_warnings, read_openvpn_backbone

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "backbone"


def openvpn_dir(tmp_path: Path, conf: str, ccd: dict[str, str]) -> str:
    (tmp_path / "ccd").mkdir()
    for name, text in ccd.items():
        (tmp_path / "ccd" / name).write_text(text)
    path = tmp_path / "backbone.conf"
    path.write_text(conf)
    return str(path)


def deploy_conf(name: str) -> str:
    """A deploy/backbone config with its client-config-dir made relative (ccd/)."""
    lines = (DEPLOY / name).read_text().splitlines()
    return "\n".join("client-config-dir ccd" if ln.startswith("client-config-dir") else ln
                     for ln in lines)  # fmt: skip


IROUTE = (DEPLOY / "ccd" / "vpnsrvB-tun").read_text()
PLAIN = (DEPLOY / "ccd" / "vpnsrvB").read_text()


def test_tun_server_with_two_iroute_peers_is_flagged(tmp_path: Path) -> None:
    conf = openvpn_dir(tmp_path, deploy_conf("openvpn-tun-two-servers.conf"),
                       {"vpnsrvB": IROUTE, "vpnsrvC": IROUTE, "rabbit": PLAIN})  # fmt: skip
    backbone = read_openvpn_backbone(conf)
    assert backbone.server and backbone.tun and backbone.dev == "tun1"
    assert backbone.iroute_peers == ("vpnsrvB", "vpnsrvC")
    [warning] = backbone_warnings("tun1", "tun", backbone)
    assert "2 peers" in warning and "vpnsrvB, vpnsrvC" in warning
    assert "docs/backbone.md" in warning


def test_the_articles_two_servers_pass(tmp_path: Path) -> None:
    conf = openvpn_dir(tmp_path, deploy_conf("openvpn-tun-two-servers.conf"),
                       {"vpnsrvB": IROUTE, "rabbit": PLAIN})  # fmt: skip
    assert backbone_warnings("tun1", "tun", read_openvpn_backbone(conf)) == []


def test_tun_server_without_any_iroute_is_flagged(tmp_path: Path) -> None:
    conf = openvpn_dir(tmp_path, deploy_conf("openvpn-tun-two-servers.conf"), {"vpnsrvB": PLAIN})
    [warning] = backbone_warnings("tun1", "tun", read_openvpn_backbone(conf))
    assert "no peer" in warning and "source check" in warning


def test_tap_hub_passes_whatever_its_peers(tmp_path: Path) -> None:
    conf = openvpn_dir(tmp_path, deploy_conf("openvpn-tap-hub.conf"),
                       {"vpnsrvB": PLAIN, "vpnsrvC": PLAIN, "vpnsrvD": PLAIN})  # fmt: skip
    backbone = read_openvpn_backbone(conf)
    assert backbone.server and not backbone.tun
    assert backbone_warnings("tap1", "tap", backbone) == []


def test_a_tun_client_or_point_to_point_tunnel_is_not_flagged(tmp_path: Path) -> None:
    client = openvpn_dir(tmp_path, deploy_conf("openvpn-tun-two-servers-client.conf"), {})
    assert not read_openvpn_backbone(client).server
    assert backbone_warnings("tun1", "tun", read_openvpn_backbone(client)) == []
    p2p = tmp_path / "p2p.conf"
    p2p.write_text("dev tun1\nifconfig 10.200.200.1 10.200.200.2\nremote b 11940\n")
    assert backbone_warnings("tun1", "tun", read_openvpn_backbone(str(p2p))) == []


def test_the_kernels_device_type_decides_not_the_name(tmp_path: Path) -> None:
    conf = openvpn_dir(tmp_path, "server 10.200.200.0 255.255.255.0\ndev tun1\n"
                       "client-config-dir ccd\n", {"b": IROUTE, "c": IROUTE})  # fmt: skip
    backbone = read_openvpn_backbone(conf)
    assert backbone.server and backbone.tun
    assert backbone_warnings("tun1", "tun", backbone) != []
    assert backbone_warnings("tun1", "tap", backbone) == []  # a tap named tun1
    assert backbone_warnings("tun1", None, backbone) == []  # not on this host: unknown


def test_a_config_for_another_device_is_named(tmp_path: Path) -> None:
    conf = openvpn_dir(tmp_path, deploy_conf("openvpn-tap-hub.conf"), {})
    [warning] = backbone_warnings("tun1", "tun", read_openvpn_backbone(conf))
    assert "dev tap1 is not mgmt_interface tun1" in warning
