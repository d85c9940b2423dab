"""How the lab and the tests wire OpenVPN to the agent: the plugin line or the scripts."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from meshroute.lab.openvpn_conf import (
    HookCommand,
    PluginHook,
    ServerConf,
    choose_hook,
    plan_pools,
    render_server_config,
)
from meshroute.openvpn.mgmt import MgmtEndpoint
from meshroute.openvpn.plugin import PLUGIN_FILE, find_plugin

SOCK = Path("/run/mrt/hook.sock")
NETWORK = ipaddress.IPv4Network("10.100.100.0/24")


def built(tmp_path: Path) -> Path:
    library = tmp_path / PLUGIN_FILE
    library.write_bytes(b"\x7fELF")
    return library


def server_conf(hook: HookCommand | PluginHook) -> str:
    pki = Path("/pki")
    return render_server_config(ServerConf(
        name="s1", dev="tun0", port=1194, network=NETWORK, pool=plan_pools(NETWORK, 2)[0],
        ca=pki / "ca.crt", cert=pki / "s1.crt", key=pki / "s1.key",
        management=MgmtEndpoint.unix(Path("/run/mrt/mgmt.sock")), hook=hook,
    ))  # fmt: skip


def test_find_plugin_takes_the_first_built_one(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    assert find_plugin((first, second)) is None
    library = built(second)
    assert find_plugin((first, second)) == library
    assert find_plugin((built(first).parent, second)) == first / PLUGIN_FILE


def test_auto_and_plugin_take_the_plugin_when_built(tmp_path: Path) -> None:
    library = built(tmp_path)
    for form in ("auto", "plugin"):
        assert choose_hook(form, SOCK, plugin=library) == PluginHook(library, SOCK)


def test_script_form_and_auto_without_a_plugin_take_the_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert choose_hook("script", SOCK, plugin=built(tmp_path)) == HookCommand.fast(SOCK)
    monkeypatch.setattr("meshroute.lab.openvpn_conf.find_plugin", lambda: None)
    assert choose_hook("auto", SOCK) == HookCommand.fast(SOCK)
    with pytest.raises(ValueError, match=r"plugin is not built.*make -C meshroute/openvpn/plugin"):
        choose_hook("plugin", SOCK)
    with pytest.raises(ValueError, match="hook form must be one of"):
        choose_hook("fork", SOCK)


def test_plugin_config_has_one_plugin_line_and_no_scripts(tmp_path: Path) -> None:
    library = built(tmp_path)
    text = server_conf(PluginHook(library, SOCK))
    assert f"\nplugin {library} {SOCK}\n" in text
    for script_only in ("script-security", "learn-address", "client-connect"):
        assert script_only not in text


def test_script_config_keeps_the_three_script_lines() -> None:
    text = server_conf(HookCommand.fast(SOCK))
    assert "script-security 2" in text
    for event in ("learn-address", "client-connect", "client-disconnect"):
        assert f'{event} "' in text and f'--socket {SOCK} {event}"' in text
    assert "plugin " not in text


@pytest.mark.parametrize("library, sock", [
    (Path("meshroute-plugin.so"), SOCK),
    (Path("/opt/my plugins/meshroute-plugin.so"), SOCK),
    (Path("/opt/meshroute-plugin.so"), Path("run/hook.sock")),
])  # fmt: skip
def test_plugin_paths_must_be_absolute_single_words(library: Path, sock: Path) -> None:
    with pytest.raises(ValueError, match=r"absolute|without spaces"):
        PluginHook(library, sock).line()


def test_lab_up_refuses_a_missing_plugin_before_making_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from meshroute.lab.lab import Lab, LabError

    def must_not_build(*_args: object) -> None:
        raise AssertionError("lab up went on to build namespaces")

    monkeypatch.setattr("meshroute.lab.openvpn_conf.find_plugin", lambda: None)
    monkeypatch.setattr("meshroute.lab.lab.netns.create_namespaces", must_not_build)
    lab = Lab("mrtnoplugin", root=tmp_path)
    with pytest.raises(LabError, match="plugin is not built"):
        lab.up(1, 0, hooks="plugin")
    assert list(tmp_path.iterdir()) == []  # no state file, no directory, no namespace
