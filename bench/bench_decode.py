"""codec.decode of 20,000 deltas: the module's one JSON decoder against ``json.loads``
with the same hooks (which builds a decoder per call), alternated in one process.

    .venv/bin/python bench/bench_decode.py [--rounds 7]

Prints the median CPU time per delta of each and their ratio (docs/performance.md).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import time

from meshroute.core import codec
from meshroute.core.model import ClaimRecord, Delta, Header


def bodies(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        address = ipaddress.ip_address(0x0A640000 + i)
        record = ClaimRecord(address, f"c{i}", 1_700_000_000, 1_700_000_000_000 + i)
        out.append(codec.encode(Delta(Header("p", 1_700_000_000_000, 2 + i), address, record)))
    return out


class _PerCall:
    """``json.loads`` with the codec's hooks: what decode did before one decoder."""

    @staticmethod
    def decode(text: str) -> object:
        return json.loads(
            text, object_pairs_hook=codec._unique_keys, parse_constant=codec._no_constant
        )


def per_delta_us(decoder: object, batch: list[bytes]) -> float:
    codec._DECODER = decoder  # type: ignore[assignment]
    started = time.process_time()
    for body in batch:
        codec.decode(body, user_id="p")
    return (time.process_time() - started) / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--deltas", type=int, default=20_000)
    args = parser.parse_args()
    batch = bodies(args.deltas)
    shared = codec._DECODER
    runs: dict[str, list[float]] = {"per_call": [], "one_decoder": []}
    try:
        for _ in range(args.rounds):
            runs["per_call"].append(per_delta_us(_PerCall(), batch))
            runs["one_decoder"].append(per_delta_us(shared, batch))
    finally:
        codec._DECODER = shared
    old, new = statistics.median(runs["per_call"]), statistics.median(runs["one_decoder"])
    print(json.dumps({"per_call_us": round(old, 2), "one_decoder_us": round(new, 2),
                      "ratio": round(new / old, 3)}))  # fmt: skip


if __name__ == "__main__":
    main()
