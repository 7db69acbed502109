"""The books table, without Faust: row layout, local RocksDB store, Kafka changelog, partitions.

* :mod:`app.state.layout`    row keys, the versioned state row, progress rows, loading books back
* :mod:`app.state.store`     one RocksDB per table partition under ``DATA_DIR/state/``
* :mod:`app.state.changelog` the compacted changelog topic: transactional commits, restore, standbys
* :mod:`app.state.manager`   partition lifecycle: restore, activate, commit, revoke, standby

``app.faust_glue`` connects these to Faust's rebalance callbacks, its recovery service and
its consumer's seek; nothing here imports Faust.
"""
