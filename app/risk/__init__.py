"""Risk automation on bookstream's streams: positions, exposure, scenarios, hedge signals,
alerts and the cross-venue best bid/offer.

Pure parts (no I/O): :mod:`.positions` (the ``positions`` records), :mod:`.valuation` (what a
position is worth and its greeks, by contract spec; the scenario grid), :mod:`.rules` (the hedge
rules file and the hedge decision), :mod:`.alerts` (alerts and NBBO), :mod:`.engine` (event time:
inputs in, ``risk.*`` records out, deterministically). :mod:`.service` reads the topics and
publishes, inside the worker.
"""
