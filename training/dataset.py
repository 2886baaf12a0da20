"""Point-in-time-correct training sets through Feast's ``get_historical_features`` (DuckDB).

Guarantees (each has a test on hand-made tables in ``tests/training/test_dataset.py``):

- every entity row comes back exactly once and in the input order, also when many rows share a
  user and a timestamp (recfeast tags each row and checks the tags after the join);
- a feature value is never later than its row's timestamp, and a row with no value inside the
  view's ttl gets nulls, it is not dropped (Feast's DuckDB point-in-time join);
- by default a value whose ``created_timestamp`` is later than the row's timestamp (a backfill or
  a late correction) is invisible to that row (Feast's ``filter_by_created_timestamp=True``, which
  Feast 0.67 leaves off): the set never holds a value that did not exist yet at the row's time.
  The tables make this cheap: ``created_timestamp`` is when a value became available
  (:func:`recfeast.io.write_feature_table`: the time of the last event behind it), so history stays
  visible. The explicit opt-out is ``allow_values_created_later=True``. Duplicates at one event
  time resolve to the latest created (among the visible ones);
- list features of any form (``[]``, variable length, string arrays such as tags) come back as
  lists; numeric ones as float32 arrays;
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
    allow_values_created_later: bool = False
    seconds: float = 0.0

    @property
    def reproducible(self) -> bool:
        """True when values created after each row were hidden (the default)."""
        return not self.allow_values_created_later


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


def get_training_set(store, entity_df: pd.DataFrame, features="ranking_v1", *,
                     allow_values_created_later: bool = False,
                     allow_mixed_models: bool = False) -> tuple[pd.DataFrame, TrainingSetInfo]:
    """Join features to ``entity_df`` as of each row's ``event_timestamp``.

    Args:
        store: a ``feast.FeatureStore`` (DuckDB offline store).
        entity_df: entity keys of every view read, ``event_timestamp`` (tz-aware UTC), any
            request-source fields (``request_ts`` for ``ranking_v1``), any other columns (labels),
            which pass through unchanged.
        features: a feature service name or object, or a list of ``view:feature`` references.
        allow_values_created_later: also join values whose ``created_timestamp`` is after the
            entity row's time (backfills, late corrections): a leak of the future, off by default.
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
                                                filter_by_created_timestamp=not allow_values_created_later)
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
        if s.dtype == object and any(isinstance(v, (list, np.ndarray)) for v in s):
            strings = any(isinstance(x, str) for v in s if isinstance(v, (list, np.ndarray)) for x in v)
            out[col] = [_list_value(v, strings) for v in s]
    feature_cols = [n.split(":", 1)[1] for n in names]
    info = TrainingSetInfo(
        feature_service=service_name, features=names,
        model_ids={c: sorted(str(v) for v in out[c].dropna().unique()) for c in out.columns if c.endswith("_model")},
        time_range=(str(out["event_timestamp"].min()), str(out["event_timestamp"].max())),
        rows=len(out),
        rows_by_split=out["split"].value_counts().to_dict() if "split" in out.columns else {},
        positives=int(out["label"].sum()) if "label" in out.columns else None,
        null_share={c: float(out[c].isna().mean()) for c in feature_cols if c in out.columns},
        allow_values_created_later=allow_values_created_later, seconds=round(time.perf_counter() - t0, 2),
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


def _list_value(v, strings: bool):
    """A joined list value: a column of strings (tags) -> list of str, of numbers -> float32 array
    (``[]`` kept either way); anything that is not a list -> None."""
    if not isinstance(v, (list, np.ndarray)):
        return None
    return [str(x) for x in v] if strings else np.asarray(list(v), np.float32)


def save_training_set(frame: pd.DataFrame, info: TrainingSetInfo, path: Path) -> None:
    """Write the set as Parquet (vectors as ``list<float32>``, ``info`` in the schema metadata under
    ``recfeast``) and ``info`` as ``<path>.json``; both atomically."""
    import pyarrow.parquet as pq

    from recfeast import io

    def fixed_width(s):   # float32 vectors of one width: the fast vector path; ragged/string lists: plain lists
        widths = {len(v) for v in s if isinstance(v, np.ndarray)}
        return s.dtype == object and len(widths) == 1 and all(v is None or isinstance(v, np.ndarray) for v in s)

    vec = [c for c in frame.columns if fixed_width(frame[c])]
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
