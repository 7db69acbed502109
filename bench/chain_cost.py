"""CPU cost of building one ``options.chain`` record: ``.venv/bin/python bench/chain_cost.py``.

A Deribit chain of 125 options (62 strikes around a 60,123.5 forward, prices and the venue's
volatilities from a smile, coin premiums on the venue's 0.0005 tick) goes through the worker's
``ChainBuilder`` for 60 seconds of exchange time; each second a given share of its options
gets a new ticker (``--moving``, default 0.27: an option of the bench's universe, with a
ticker 0.31 times a second, has one within a second with that probability), then the chain
closes and is built and encoded. Prints the mean time a chain, for that share and for every
option moving. The README's **Options chains** and **Where the time goes** quote it.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.market import black76  # noqa: E402
from app.market.chain import ChainBuilder  # noqa: E402
from app.market.symbols import parse_option  # noqa: E402
from app.records import source  # noqa: E402

NOW = 1_764_000_000 * 10**9
SYMBOLS = [f"BTC-27MAR27-{40_000 + 1_000 * (i // 2)}-{'CP'[i % 2]}" for i in range(125)]
YEARS = (parse_option(SYMBOLS[0]).expiry_ns - NOW) / (365 * 86_400e9)  # type: ignore[union-attr]


def ticker(symbol: str, move: float) -> dict[str, Any]:
    spec = parse_option(symbol)
    assert spec is not None
    forward = 60_123.5 * (1 + move / 10)
    smile = math.log(spec.strike / forward)
    iv = 0.55 + 0.35 * smile**2 - 0.05 * smile + move
    fields: dict[str, Any] = {"underlying_price": f"{forward:.2f}", "interest_rate": "0", "delta": "0.45",
                              "gamma": "0.00001", "vega": "120.5", "theta": "-30.1"}
    for side, sigma in (("bid", iv - 0.01), ("ask", iv + 0.01), ("mark", iv)):
        coin = black76.price_one(forward, spec.strike, YEARS, sigma, spec.call) / forward
        fields[side] = f"{max(coin, 0.0005):.4f}"
        fields[f"{side}_iv"] = f"{round(sigma * 100, 2) / 100:.6f}"
    return fields


def per_chain(moving: float, seconds: int = 60) -> float:
    """Mean seconds to build and encode the chain, with ``moving`` of its options ticking a second."""
    rnd = random.Random(1)
    builder = ChainBuilder(1000)
    src = source("raw.deribit", 0, 0, 0)
    for symbol in SYMBOLS:
        builder.offer(f"deribit:{symbol}", ticker(symbol, 0.0), NOW, NOW, src)
    spent, built = 0.0, 0
    for second in range(1, seconds + 1):
        ts = NOW + second * 10**9
        for symbol in SYMBOLS:
            if rnd.random() < moving:
                builder.offer(f"deribit:{symbol}", ticker(symbol, rnd.uniform(-0.01, 0.01)), ts, ts, src)
        builder.offer(f"deribit:{SYMBOLS[0]}", ticker(SYMBOLS[0], 0.001), ts + 10**9, ts, src)  # closes the second
        start = time.perf_counter()
        built += sum(1 for _ in builder.built(ts))
        spent += time.perf_counter() - start
    return spent / built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moving", type=float, default=0.27, help="share of the options with a new ticker a second")
    args = parser.parse_args()
    for moving in (args.moving, 1.0):
        print(f"{len(SYMBOLS)} options, {moving:.0%} moving a second: {per_chain(moving) * 1e3:.2f} ms a chain built")


if __name__ == "__main__":
    main()
