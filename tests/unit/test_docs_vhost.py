"""One vhost everywhere: every example `broker_url` uses the vhost the broker gets.

Following the README's example (vhost `/`, `.../%2F`) with the users made by
deploy/rabbitmq/setup-agent-user.sh or `meshroute broker definitions` (vhost
`meshroute`) ends in `530 access refused`. So every config example in the docs and
deploy/ must name the vhost those tools create by default. (The code's default URL,
`amqp://localhost:5672/%2F`, is a default, not an example: it is not a
`broker_url = ...` line.)
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

from meshroute.bus.definitions import definitions

REPO = Path(__file__).resolve().parents[1].parent
SETUP = REPO / "deploy" / "rabbitmq" / "setup-agent-user.sh"


def default_vhost() -> str:
    """The vhost both broker tools create by default, and they must agree."""
    doc = definitions([])
    (vhost,) = [v["name"] for v in doc["vhosts"]]
    dry = subprocess.run(["sh", str(SETUP), "-d", "vpnsrvA", "pw"], capture_output=True,
                         text=True, check=True, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert f"'set_permissions' '-p' '{vhost}' 'vpnsrvA'" in dry.stdout
    return vhost


def example_urls() -> list[tuple[str, int, str]]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
             *sorted(p for p in (REPO / "deploy").rglob("*") if p.is_file())]  # fmt: skip
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            match = re.match(r"\s*#?\s*broker_url\s*=\s*(.+)$", line)
            if match:
                for url in re.split(r"[,\s]+", match.group(1).strip()):
                    if "://" in url and not urlsplit(url).netloc.startswith("..."):
                        found.append((str(path.relative_to(REPO)), number, url))
    return found


def test_every_example_broker_url_uses_the_brokers_vhost() -> None:
    vhost = default_vhost()
    urls = example_urls()
    assert len(urls) >= 3, urls
    wrong = [
        f"{path}:{number}: {url}"
        for path, number, url in urls
        if unquote(urlsplit(url).path[1:]) != vhost
    ]
    assert not wrong, f"these examples do not use vhost {vhost!r} (end the URL in /{vhost}):\n" + (
        "\n".join(wrong)
    )
