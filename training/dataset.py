"""Point-in-time-correct training sets through Feast's ``get_historical_features`` (DuckDB).

Guarantees (each has a test on hand-made tables in ``tests/training/test_dataset.py``):

- every entity row comes back exactly once and in the input order, also when many rows share a
  user and a timestamp (recfeast tags each row and checks the tags after the join);
- a feature value is never later than its row's timestamp, and a row with no value inside the
  view's ttl gets nulls, it is not dropped (Feast's DuckDB point-in-time join);
- with ``reproducible=True`` a value whose ``created_timestamp`` is later than the row's timestamp
  (a backfill after a model change) is invisible to that row (Feast's
  ``filter_by_created_timestamp``); duplicates at one event time resolve to the latest created;
- the set records what it was built from (feature service, features, model identities, time
  range, row counts) in its Parquet metadata and a JSON file beside it.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recfeast.errors import DataError, StoreError

ROW_TAG = "__recfeast_row"
REQUIRED = ("event_timestamp",)


@dataclass
class TrainingSetInfo:
    """Provenance of a training set (also saved as JSON and in the Parquet schema metadata)."""

    feature_service: str
    features: list[str]
    model_ids: dict[str, list[str]]
    time_range: tuple[str, str]
    rows: int
    rows_by_split: dict[str, int] = field(default_factory=dict)
    positives: int | None = None
    null_share: dict[str, float] = field(default_factory=dict)
    reproducible: bool = False
    seconds: float = 0.0


def _feature_list(store, features):
    if isinstance(features, str):
        try:
            features = store.get_feature_service(features)
        except Exception as exc:
            raise StoreError(f"feature service {features!r} not in the registry: {exc}") from exc
    if hasattr(features, "feature_view_projections"):
        names = [f"{p.name}:{f.name}" for p in features.feature_view_projections for f in p.features]
        return features, features.name, names
    return list(features), "", list(features)


def get_training_set(store, entity_df: pd.DataFrame, features="ranking_v1",
                     reproducible: bool = False, allow_mixed_models: bool = False) -> tuple[pd.DataFrame, TrainingSetInfo]:
    """Join features to ``entity_df`` as of each row's ``event_timestamp``.

    Args:
        store: a ``feast.FeatureStore`` (DuckDB offline store).
        entity_df: entity keys of every view read, ``event_timestamp`` (tz-aware UTC), any
            request-source fields (``request_ts`` for ``ranking_v1``), any other columns (labels),
            which pass through unchanged.
        features: a feature service name or object, or a list of ``view:feature`` references.
        reproducible: ignore feature rows created after the entity row's timestamp.
        allow_mixed_models: accept rows whose embeddings come from two versions of one encoder.

    Returns:
        ``(frame, info)``: the input rows in input order with one column per feature (vectors as
        float32 arrays), and their :class:`TrainingSetInfo`.

    Raises:
        DataError: ``entity_df`` lacks ``event_timestamp`` or has naive timestamps.
        StoreError: Feast fails, or returns rows missing, duplicated or invented, or rows from two
            versions of one encoder (a ``*_model`` column with two identities, or a sequence embedding
            read from another text space than ``text_model``'s) unless
            ``allow_mixed_models`` (a model trained on such a set compares vectors from two spaces).
    """
    import time

    for col in REQUIRED:
        if col not in entity_df.columns:
            raise DataError(f"entity_df has no {col!r} column (columns: {list(entity_df.columns)})")
    if not isinstance(entity_df["event_timestamp"].dtype, pd.DatetimeTZDtype):
        raise DataError("entity_df.event_timestamp must be tz-aware UTC (naive times are ambiguous)")
    feats, service_name, names = _feature_list(store, features)
    df = entity_df.reset_index(drop=True).copy()
    df[ROW_TAG] = np.arange(len(df), dtype=np.int64)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            job = store.get_historical_features(entity_df=df, features=feats,
                                                filter_by_created_timestamp=reproducible)
            out = job.to_df()
    except Exception as exc:
        raise StoreError(f"get_historical_features failed: {exc}") from exc
    tags = out[ROW_TAG].to_numpy() if ROW_TAG in out.columns else np.array([], np.int64)
    if len(out) != len(df) or not np.array_equal(np.sort(tags), df[ROW_TAG].to_numpy()):
        raise StoreError(f"point-in-time join returned {len(out)} rows for {len(df)} entity rows "
                         f"({len(set(tags))} distinct): rows were dropped or duplicated")
    out = out.sort_values(ROW_TAG, kind="stable").drop(columns=ROW_TAG).reset_index(drop=True)
    out = out[list(entity_df.columns) + [c for c in out.columns if c not in entity_df.columns]]
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    for col in out.columns:
        s = out[col]
        if s.dtype == object and any(isinstance(v, (list, np.ndarray)) for v in s.head(200)):
            out[col] = [None if v is None or (not isinstance(v, (list, np.ndarray))) else np.asarray(v, np.float32)
                        for v in s]
    feature_cols = [n.split(":", 1)[1] for n in names]
    info = TrainingSetInfo(
        feature_service=service_name, features=names,
        model_ids={c: sorted(str(v) for v in out[c].dropna().unique()) for c in out.columns if c.endswith("_model")},
        time_range=(str(out["event_timestamp"].min()), str(out["event_timestamp"].max())),
        rows=len(out),
        rows_by_split=out["split"].value_counts().to_dict() if "split" in out.columns else {},
        positives=int(out["label"].sum()) if "label" in out.columns else None,
        null_share={c: float(out[c].isna().mean()) for c in feature_cols if c in out.columns},
        reproducible=reproducible, seconds=round(time.perf_counter() - t0, 2),
    )
    mixed = {c: ids for c, ids in info.model_ids.items() if len(ids) > 1}
    text_ids = set(info.model_ids.get("text_model", []))
    for col, ids in info.model_ids.items():   # "<sequence id>|<text id>": read from which text space?
        spaces = {i.split("|", 1)[1] for i in ids if "|" in i}
        if text_ids and spaces and spaces != text_ids:
            mixed[col] = sorted(spaces | text_ids)
    if mixed and not allow_mixed_models:
        raise StoreError(f"the training set mixes embedding spaces {mixed}: the tables changed version while it was "
                         "read (a model promotion?) or were written by two versions; rebuild it once they agree")
    return out, info


def save_training_set(frame: pd.DataFrame, info: TrainingSetInfo, path: Path) -> None:
    """Write the set as Parquet (vectors as ``list<float32>``, ``info`` in the schema metadata under
    ``recfeast``) and ``info`` as ``<path>.json``; both atomically."""
    import pyarrow.parquet as pq

    from recfeast import io

    vec = [c for c in frame.columns if frame[c].dtype == object and any(isinstance(v, np.ndarray) for v in frame[c].head(200))]
    table = io.to_arrow(frame, vec)
    meta = json.dumps(asdict(info), default=str)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"recfeast": meta.encode()})
    io.atomic_write_bytes(Path(path), lambda p: pq.write_table(table, p))
    io.write_json(Path(str(path) + ".json"), asdict(info))


def load_training_set(path: Path) -> tuple[pd.DataFrame, dict]:
    """Read a set written by :func:`save_training_set`: ``(frame, info dict)``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    info = json.loads((table.schema.metadata or {}).get(b"recfeast", b"{}"))
    return table.to_pandas(), info
