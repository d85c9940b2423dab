"""docs/install.md, run: every shell block not marked "not run by the test", in order.

The blocks run as one bash script (a user's shell session: variables carry over),
from a copy of the source checkout, inside ``unshare --mount --net``: a private
network namespace (the sysctls apply there only) and overlays over /etc, /opt,
/usr/local and /root whose upper layers are temp dirs, so the user, the venv, the
link, the unit and every file the guide writes vanish with the namespace and the
host is left as it was. The namespace has no network, so the guide's pip commands
get meshroute's dependencies (and setuptools for the build) from a wheelhouse
downloaded beforehand (PIP_NO_INDEX, PIP_FIND_LINKS); tests/package/test_wheel.py
installs from the index itself. The unit is checked with ``systemd-analyze
verify``, as the guide does.

After the guide's blocks, checks that do not trust its own output: the link and the
venv, the sysctls, the definitions' users, ``proto meshroute`` resolved by iproute2.
Not run (each block says why): apt-get, the firewall, RabbitMQ and OpenVPN as
services, ``systemctl``, the checks against a running agent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "install.md"
SKIP = re.compile(r"<!-- not run by the test: (.+?) -->")
OVERLAID = ("/etc", "/opt", "/usr/local", "/root")

VERIFY = r"""
# --- checks after the guide (not the guide's own), away from the checkout ---
cd /
test "$(readlink /usr/local/bin/meshroute)" = /opt/meshroute/bin/meshroute
/opt/meshroute/bin/python -c 'import meshroute; assert meshroute.__file__.startswith("/opt/")'
test "$(sysctl -n net.ipv4.ip_forward)" = 1
test "$(sysctl -n net.ipv4.conf.all.rp_filter)" = 2
python3 - <<'PYEND'
import json
d = json.load(open("/root/meshroute-broker/definitions.json"))
print("USERS", sorted(u["name"] for u in d["users"]), "VHOSTS", [v["name"] for v in d["vhosts"]])
PYEND
grep -q '^broker_url = amqps://vpnsrvA:[A-Za-z0-9_-]\{20,\}@rabbit-1' /etc/meshroute/meshroute.conf
ip link add mrguide0 type veth peer name mrguide1
ip addr add 10.200.200.1/24 dev mrguide0
ip link set mrguide0 up && ip link set mrguide1 up
ip route add 10.100.100.66/32 via 10.200.200.2 proto 201
echo "BY-NAME $(ip route show proto meshroute)"
echo "NAMED $(ip route show 10.100.100.66/32)"
echo GUIDE-OK
"""


def guide_blocks() -> list[tuple[str, str | None]]:
    """Every ```sh block with the reason it is not run (None: it is run)."""
    text = GUIDE.read_text()
    blocks = []
    for match in re.finditer(r"```sh\n(.*?)```", text, re.S):
        before = text[: match.start()].rstrip().splitlines()[-1]
        reason = SKIP.fullmatch(before.strip())
        blocks.append((match.group(1), reason.group(1) if reason else None))
    return blocks


def checkout_copy(dest: Path) -> None:
    for name in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "meshroute", dest / "meshroute", ignore=ignore)
    shutil.copytree(REPO / "deploy", dest / "deploy", ignore=ignore)


def wheelhouse(dest: Path) -> Path:
    """meshroute's dependencies and the build backend, fetched with the host's network."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    for reqs in (project["project"]["dependencies"], project["build-system"]["requires"]):
        subprocess.run([*pip, "download", "--dest", str(dest), *reqs], check=True, timeout=180)
    return dest


def test_the_guide_runs_the_steps_that_matter() -> None:
    run = "\n".join(code for code, reason in guide_blocks() if reason is None)
    for needed in ("python3 -m venv /opt/meshroute", "ln -sf /opt/meshroute/bin/meshroute",
                   "sysctl -p", "openssl req -x509", "meshroute broker definitions",
                   "meshroute check", "systemd-analyze verify", "useradd"):  # fmt: skip
        assert needed in run, f"the test would not run {needed!r}"
    skipped = [reason for _, reason in guide_blocks() if reason]
    assert all(len(reason) > 10 for reason in skipped)


def test_install_guide_in_a_namespace(tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze (Debian package systemd) needed"
    src = tmp_path / "src"
    src.mkdir()
    checkout_copy(src)
    watched = [Path("/opt/meshroute"), Path("/usr/local/bin/meshroute"),
               Path("/etc/sysctl.d/60-meshroute.conf"), Path("/root/meshroute-pki")]  # fmt: skip
    before = {p: p.exists() for p in watched}
    mounts = []
    for index, path in enumerate(OVERLAID):
        upper, work = tmp_path / f"upper{index}", tmp_path / f"work{index}"
        upper.mkdir()
        work.mkdir()
        mounts.append(
            f"mount -t overlay overlay -o lowerdir={path},upperdir={upper},workdir={work} {path}"
        )
    script = tmp_path / "guide.sh"
    body = "\n".join(code for code, reason in guide_blocks() if reason is None)
    script.write_text(f"set -euxo pipefail\ncd {src}\n{body}\n{VERIFY}")
    outer = " && ".join(["mount --make-rprivate /", *mounts, f"exec bash {script}"])
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    env["HOME"] = "/root"
    env["PIP_NO_INDEX"] = "1"
    env["PIP_FIND_LINKS"] = str(wheelhouse(tmp_path / "wheelhouse"))
    done = subprocess.run(
        ["unshare", "--mount", "--net", "bash", "-c", outer],
        capture_output=True, text=True, timeout=420, env=env, check=False,
    )  # fmt: skip
    log = f"exit {done.returncode}\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-8000:]}"
    assert done.returncode == 0, log
    assert "GUIDE-OK" in done.stdout, log
    assert "meshroute, version" in done.stdout
    assert "USERS ['ops', 'vpnsrvA', 'vpnsrvB', 'vpnsrvC'] VHOSTS ['meshroute']" in done.stdout
    # iproute2 reads the guide's rt_protos.d entry: 201 <-> "meshroute", both ways.
    assert "BY-NAME 10.100.100.66 via 10.200.200.2 dev mrguide0" in done.stdout
    assert "NAMED 10.100.100.66 via 10.200.200.2 dev mrguide0 proto meshroute" in done.stdout
    assert {p: p.exists() for p in watched} == before, "the guide leaked out of its namespace"
