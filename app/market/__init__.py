"""Market data beyond books: trades, tickers and options chains (no Faust, no Kafka).

* :mod:`app.market.records`: the normalised :class:`Trade` and :class:`Ticker` a venue's
  market parser (``Venue.market``) turns a verbatim frame into, and their JSON records.
* :mod:`app.market.cursor`: per instrument, which trades were already published (duplicates
  dropped by trade id) and whether a contiguous trade sequence has a gap.
* :mod:`app.market.symbols`: option symbols → underlying, expiry, strike, call/put and the
  chain key that co-partitions an expiry's options with its future.
* :mod:`app.market.black76`: vectorised Black-76 prices, implied volatility and greeks.
* :mod:`app.market.chain`: the ``options.chain`` snapshots built from option tickers.
"""
