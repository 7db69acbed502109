"""CPU cost of one ``book.depth`` record's aggregates (cumulative size within 10–100 bps of
mid, imbalance) on a shallow and a deep book: ``.venv/bin/python bench/depth_cost.py``.

The README's ``DEPTH_INTERVAL_MS`` row quotes it: at one record per instrument per second,
this is what a thousand instruments' ``book.depth`` costs a worker each second.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.book import OrderBook  # noqa: E402


def main() -> None:
    for levels in (25, 5000):
        book = OrderBook()  # half-dollar ticks around 60,000: 100 bps holds 1,200 levels a side
        book.apply([(f"{60000 - i * 0.5:.1f}", f"{i % 7 + 0.25}") for i in range(levels)],
                   [(f"{60000.5 + i * 0.5:.1f}", f"{i % 5 + 0.5}") for i in range(levels)])
        number = max(20, 50_000 // levels)
        best = min(timeit.repeat(lambda b=book: b.aggregates(10), number=number, repeat=5)) / number
        print(f"{levels:>5} levels a side: {best * 1e6:8.1f} µs per book.depth aggregate")


if __name__ == "__main__":
    main()
