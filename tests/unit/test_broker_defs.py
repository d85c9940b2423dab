"""The definitions document and its passwords, without a broker.

tests/integration/test_broker_definitions.py imports the same document into a real
node; these check the rules cheaply: names refused with the name, passwords never in
the document, files created 0600 and never overwritten, the lab's permissions.
"""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from meshroute.bus.definitions import (
    Credential,
    DefinitionsError,
    credentials,
    definitions,
    definitions_command,
    parse_agents,
)
from meshroute.lab.rabbitmq import agent_permissions


def run(*, agents="s1,s2", out=None, password_dir=None, vhost="meshroute", monitoring=None):
    stdout, stderr = io.StringIO(), io.StringIO()
    code = definitions_command(
        agents, vhost=vhost, exchange="meshroute", out=out, password_dir=password_dir,
        monitoring_user=monitoring, stdout=stdout, stderr=stderr,
    )  # fmt: skip
    return code, stdout.getvalue(), stderr.getvalue()


def test_agents_are_split_and_bad_or_repeated_names_are_named() -> None:
    assert parse_agents("s1, s2 s3,") == ["s1", "s2", "s3"]
    with pytest.raises(DefinitionsError, match="'s1' is listed twice"):
        parse_agents("s1,s1")
    with pytest.raises(DefinitionsError, match=r"invalid name 'a\|b'"):
        parse_agents("a|b")
    with pytest.raises(DefinitionsError, match="no agent name"):
        parse_agents(" , ")


def test_document_has_hashes_lab_permissions_exchange_and_policy() -> None:
    creds = [Credential("vpn-a", "secret-a", "generated")]
    doc = definitions(creds, vhost="mesh1", exchange="mx")
    assert "secret-a" not in json.dumps(doc)
    (user,) = doc["users"]
    assert user["name"] == "vpn-a" and user["tags"] == [] and user["password_hash"]
    perms = agent_permissions("vpn-a", "mx")
    assert doc["permissions"] == [
        {"user": "vpn-a", "vhost": "mesh1", "configure": perms.configure,
         "write": perms.write, "read": perms.read},
    ]  # fmt: skip
    assert doc["vhosts"] == [{"name": "mesh1"}]
    (exchange,) = doc["exchanges"]
    assert (exchange["name"], exchange["type"], exchange["durable"]) == ("mx", "fanout", True)
    (policy,) = doc["policies"]
    assert policy["vhost"] == "mesh1" and policy["apply-to"] == "queues"


def test_monitoring_user_gets_the_tag_and_no_permission() -> None:
    doc = definitions(
        [Credential("s1", "a", "generated")], monitoring=Credential("ops", "b", "generated")
    )
    ops = next(u for u in doc["users"] if u["name"] == "ops")
    assert ops["tags"] == ["monitoring"]
    grant = next(p for p in doc["permissions"] if p["user"] == "ops")
    assert (grant["configure"], grant["write"], grant["read"]) == ("^$", "^$", "^$")


def test_password_dir_creates_private_files_once_then_reads_them(tmp_path: Path) -> None:
    first = credentials(["s1"], tmp_path, generate=lambda: "gen-1")
    assert first[0].password == "gen-1" and first[0].source.startswith("generated into")
    assert stat.S_IMODE((tmp_path / "s1").stat().st_mode) == 0o600
    again = credentials(["s1"], tmp_path, generate=lambda: "gen-2")
    assert again[0].password == "gen-1" and again[0].source == f"read {tmp_path / 's1'}"


def test_empty_password_file_is_an_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "s1").write_text("\n")
    code, out, err = run(agents="s1", password_dir=tmp_path)
    assert code == 2 and out == ""
    assert f"password file {tmp_path / 's1'}" in err


def test_without_password_dir_passwords_go_to_stderr_once_and_json_to_stdout() -> None:
    code, out, err = run(agents="s1")
    assert code == 0
    doc = json.loads(out)
    password = err.splitlines()[0].split("\t")[1]
    assert password and password not in out
    assert [u["name"] for u in doc["users"]] == ["s1"]


def test_out_file_is_private(tmp_path: Path) -> None:
    out = tmp_path / "defs.json"
    code, stdout, _ = run(out=out, password_dir=tmp_path)
    assert code == 0 and stdout == ""
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["vhosts"] == [{"name": "meshroute"}]


def test_bad_vhost_and_missing_password_dir_are_usage_errors(tmp_path: Path) -> None:
    assert run(vhost="bad vhost")[0] == 2
    code, _, err = run(password_dir=tmp_path / "absent")
    assert code == 2 and "is not a directory" in err
