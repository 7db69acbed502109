"""Two workers on one machine: kill one, the other serves every book; start it, they split again."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Namespace
from tests.scenarios import takeover

FEEDS = {"deribit": ["BTC-PERPETUAL", "ETH-PERPETUAL"], "okx": ["BTC-USDT", "BTC-USDT-SWAP"],
         "bybit-linear": ["BTCUSDT", "ETHUSDT"], "binance-usdm": ["BTCUSDT"], "coinbase": ["BTC-USD"]}


def test_kill_one_of_two_workers_the_other_takes_over_and_the_api_answers_throughout(ns: Namespace,
                                                                                      tmp_path: Path) -> None:
    figures = takeover(ns, tmp_path, FEEDS)
    assert figures["takeovers"] == 1
    assert figures["book_tops_checked"] > 100
