"""Batch side of recfeast: read and clean raw data, encode it, write the feature tables, load the
online store, and run all of it on a schedule.

Modules, in the order data flows: ``adapters`` -> ``cleaning`` -> ``preprocess`` -> ``encoders`` ->
``features`` -> ``io`` (atomic Parquet) -> ``store`` (feast apply/materialize) -> ``online``
(stale-row clearing and loading); ``job`` runs them end to end, ``schedule`` on a timer.
"""
