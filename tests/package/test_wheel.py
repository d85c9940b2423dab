"""The wheel, as a user gets it: built from the tree, installed alone in a fresh venv.

The rest of the suite runs the editable install, which hides a missing package
file, a wrong entry point or a dependency that only the test extras pull in. Here
the wheel is built (isolated build: setuptools from the index, as any user's pip
would), installed with nothing else of this tree into a new venv (its dependencies
from the package index), and the console script is run from outside the tree.
"""

from __future__ import annotations

import email
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from meshroute import __version__

pytestmark = pytest.mark.package

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "meshroute.conf.example"


def run(*cmd: str | Path, cwd: Path, timeout: float = 240) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    assert done.returncode == 0, f"{cmd}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out, REPO, cwd=out)
    (built,) = out.glob("meshroute-*.whl")
    return built


def test_wheel_carries_license_and_spdx_expression(wheel: Path) -> None:
    assert wheel.name.startswith(f"meshroute-{__version__}-py3-none-any")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = f"meshroute-{__version__}.dist-info"
        meta = email.message_from_bytes(z.read(f"{info}/METADATA"))
        license_text = z.read(f"{info}/licenses/LICENSE").decode()
    assert meta["License-Expression"] == "MIT"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert "Permission is hereby granted" in license_text
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    assert "meshroute/openvpn/hook.py" in names


def test_cli_runs_from_a_venv_holding_only_the_wheel(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip = env_dir / "bin" / "pip"
    run(pip, "install", "-q", "--disable-pip-version-check", wheel, cwd=tmp_path)
    meshroute = env_dir / "bin" / "meshroute"
    assert run(meshroute, "--version", cwd=tmp_path).strip() == f"meshroute, version {__version__}"
    checked = run(meshroute, "check", EXAMPLE, cwd=tmp_path)
    assert "vpnsrvA" in checked
    # The package imported is the venv's, not this tree's.
    where = run(env_dir / "bin" / "python", "-c", "import meshroute; print(meshroute.__file__)",
                cwd=tmp_path)  # fmt: skip
    assert where.startswith(str(env_dir))
    helped = run(meshroute, "broker", "definitions", "--help", cwd=tmp_path)
    assert "--agents" in helped
