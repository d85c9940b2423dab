"""The convergence bench's pure parts: reading `ip -ts monitor route`, BIRD's config."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from bench_convergence import BIRD, DEL, LEARN, MESH, NEW, parse_monitor_line  # noqa: E402
from bird_mesh import BirdNode, render_config  # noqa: E402

OFFSET = 1_000_000.0  # wall - monotonic


def parsed(line: str) -> tuple[float, str, str, str] | None:
    return parse_monitor_line(line, OFFSET)


def test_meshroute_bird_and_learned_routes_are_told_apart() -> None:
    at, what, kind, dst = parsed(
        "[2026-11-29T02:15:38.972463] 10.100.100.6 via 10.200.200.2 dev bb0 proto 201 \n"
    )
    assert (what, kind, dst) == (MESH, NEW, "10.100.100.6/32")
    assert at == datetime.fromisoformat("2026-11-29T02:15:38.972463").timestamp() - OFFSET
    assert parsed("[2026-11-29T02:15:38.1] 10.100.100.6 via 10.200.200.2 dev bb0 table 101 "
                  "proto bird metric 32\n")[1:] == (BIRD, NEW, "10.100.100.6/32")  # fmt: skip
    assert parsed("[2026-11-29T02:15:38.1] Deleted 10.100.100.7 dev tun0 table 100 scope "
                  "link\n")[1:] == (LEARN, DEL, "10.100.100.7/32")  # fmt: skip


def test_other_lines_are_ignored() -> None:
    for line in (
        "[2026-11-29T02:15:38.1] 10.100.100.6 via 10.200.200.2 dev bb0 proto bird\n",  # main
        "[2026-11-29T02:15:38.1] 10.100.100.0/24 dev tun0 proto kernel scope link\n",
        "[2026-11-29T02:15:38.1] fd00:100::6 via fd00:200::2 dev bb0 proto 201\n",
        "[2026-11-29T02:15:38.1] local 10.200.200.1 dev bb0 table local proto kernel\n",
        "Timestamp: Sun Nov 29 02:20:59 2026 454830 usec\n",
    ):
        assert parsed(line) is None, line


def test_monitor_times_keep_their_order_and_spacing() -> None:
    a = parsed("[2026-11-29T02:15:38.972463] 10.100.100.6 dev tun0 table 100\n")
    b = parsed("[2026-11-29T02:15:38.975463] 10.100.100.6 dev tun0 table 100\n")
    assert a and b and abs((b[0] - a[0]) - 0.003) < 1e-6


def test_bird_config_peers_with_every_other_server_and_keeps_to_its_tables() -> None:
    node = BirdNode("s1", "mrb1-s1", "10.200.200.1", ("10.200.200.2", "10.200.200.3"))
    text = render_config(node, "bb0")
    assert "router id 10.200.200.1;" in text
    for peer in node.peers:
        assert f"neighbor {peer} as 65000;" in text
    assert "kernel table 100;" in text and "learn;" in text
    assert "kernel table 101;" in text and "export where source = RTS_BGP;" in text
    assert "kernel table 254" not in text and "main" not in text
