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
- vectors (float lists of one length: every embedding) come back as float32 buffers, each distinct
  vector once (dictionary-encoded ``fixed_size_list<float32>`` columns: no Python object per row, an
  item's embedding not repeated on each of its rows; missing or ``[]``: null), built chunk by chunk
  so that memory holds the set plus one chunk's join; other lists of any form
  (``[]``, variable length, string arrays such as tags) come back as lists;
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
#: entity rows per ``get_historical_features`` call: bounds the join's and Feast's transient memory
CHUNK_ROWS = 10_000
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
    vectors: dict[str, int] = field(default_factory=dict)   # fixed-width float32 vector column -> dim

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
                     allow_mixed_models: bool = False, chunk_rows: int = CHUNK_ROWS,
                     progress=None) -> tuple[pd.DataFrame, TrainingSetInfo]:
    """Join features to ``entity_df`` as of each row's ``event_timestamp``.

    The rows go to Feast in chunks of ``chunk_rows``, and each chunk's vectors go straight from Arrow
    into one float32 table of distinct vectors per column: memory holds the finished set plus one
    chunk's join, never a Python object per vector (what Feast's ``to_df`` builds) and never the same
    item embedding once per row.

    Args:
        store: a ``feast.FeatureStore`` (DuckDB offline store).
        entity_df: entity keys of every view read, ``event_timestamp`` (tz-aware UTC), any
            request-source fields (``request_ts`` for ``ranking_v1``), any other columns (labels),
            which pass through unchanged.
        features: a feature service name or object, or a list of ``view:feature`` references.
        allow_values_created_later: also join values whose ``created_timestamp`` is after the
            entity row's time (backfills, late corrections): a leak of the future, off by default.
        allow_mixed_models: accept rows whose embeddings come from two versions of one encoder.
        chunk_rows: entity rows per ``get_historical_features`` call (bounds the join's memory).
        progress: called as ``progress(rows_done, rows_total)`` after each chunk.

    Returns:
        ``(frame, info)``: the input rows in input order with one column per feature, and their
        :class:`TrainingSetInfo`. A float list feature whose values have one length ``d`` (every
        embedding) is a column of ``pd.ArrowDtype(dictionary<int32, fixed_size_list<float32>[d]>)``:
        each distinct vector stored once in a ``(u, d)`` float32 table, each row an int32 index into
        it (null where missing; an empty list counts as missing). :func:`recfeast.io.vector_rows`
        gives ``(table, rows)`` without a copy, :func:`recfeast.io.vector_view` the ``(n, d)`` matrix.
        Other lists (strings such as tags, integers, floats of varying length) are Python lists or
        float32 arrays.

    Raises:
        DataError: ``entity_df`` lacks ``event_timestamp`` or has naive timestamps.
        StoreError: Feast fails, or returns rows missing, duplicated or invented, or rows from two
            versions of one encoder (a ``*_model`` column with two identities, or a sequence embedding
            read from another text space than ``text_model``'s) unless
            ``allow_mixed_models`` (a model trained on such a set compares vectors from two spaces).
    """
    import time

    import pyarrow as pa
    import pyarrow.compute as pc

    from recfeast import io

    for col in REQUIRED:
        if col not in entity_df.columns:
            raise DataError(f"entity_df has no {col!r} column (columns: {list(entity_df.columns)})")
    if not isinstance(entity_df["event_timestamp"].dtype, pd.DatetimeTZDtype):
        raise DataError("entity_df.event_timestamp must be tz-aware UTC (naive times are ambiguous)")
    feats, service_name, names = _feature_list(store, features)
    df = entity_df.reset_index(drop=True).copy()
    df[ROW_TAG] = np.arange(len(df), dtype=np.int64)
    n = len(df)
    t0 = time.perf_counter()
    tables, vectors = [], {}
    for start in range(0, max(n, 1), max(int(chunk_rows), 1)):
        part = df.iloc[start:start + chunk_rows].copy()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                job = store.get_historical_features(entity_df=part, features=feats,
                                                    filter_by_created_timestamp=not allow_values_created_later)
                table = job.to_arrow()
        except Exception as exc:
            raise StoreError(f"get_historical_features failed: {exc}") from exc
        del job
        tags = (table.column(ROW_TAG).to_numpy() if ROW_TAG in table.column_names else np.array([], np.int64))
        expected = part[ROW_TAG].to_numpy()
        if len(tags) != len(part) or not np.array_equal(np.sort(tags), expected):
            raise StoreError(f"point-in-time join returned {len(tags)} rows for {len(part)} entity rows "
                             f"({len(set(tags.tolist()))} distinct): rows were dropped or duplicated")
        if not np.array_equal(tags, expected):
            table = table.take(pa.array(np.argsort(tags, kind="stable")))
        for col in table.column_names:
            typ = table.schema.field(col).type
            if col in vectors or (col not in entity_df.columns and _float_list(typ)):
                vectors.setdefault(col, _VectorColumn(col, n)).add(start, table.column(col))
        table = table.drop_columns([c for c in table.column_names if c in vectors or c == ROW_TAG])
        tables.append(table)
        del table
        _release_memory()
        if progress is not None:
            progress(min(start + chunk_rows, n), n)
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    del tables
    out = table.to_pandas()
    del table
    for col in out.columns:
        s = out[col]
        if s.dtype == object and any(isinstance(v, (list, np.ndarray)) for v in s):
            strings = any(isinstance(x, str) for v in s if isinstance(v, (list, np.ndarray)) for x in v)
            out[col] = [_list_value(v, strings) for v in s]
    for col, vec in vectors.items():
        out[col] = vec.series(out.index)
    out = out[list(entity_df.columns) + [c for c in out.columns if c not in entity_df.columns]]
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
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
        vectors={c: io.vector_width(out[c]) for c in out.columns if io.is_vector_series(out[c])},
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


def _release_memory() -> None:
    """Hand the memory a chunk's join freed back to the system (Arrow's pool and, on glibc, the C
    heap, which otherwise keeps the pages of Feast's per-row pandas objects)."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):   # not glibc
        pass


def _float_list(typ) -> bool:
    import pyarrow as pa

    return (pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ)) \
        and pa.types.is_floating(typ.value_type)


def _distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)`` of the distinct rows of a float32 matrix: ``rows[first][inverse] == rows``.
    Rows are keyed by two random projections (fast), the grouping is checked element by element, and
    on any doubt (a collision, NaN) the rows are compared as bytes instead."""
    n, d = rows.shape
    proj = np.random.default_rng(20261201).standard_normal((d, 2)).astype(np.float32)
    p = rows @ proj
    key = p[:, 0].astype(np.complex64) + 1j * p[:, 1]
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    same = np.isfinite(p).all() and all(
        bool((rows[s:s + 4096] == rows[first[inverse[s:s + 4096]]]).all()) for s in range(0, n, 4096))
    if not same:
        v = np.ascontiguousarray(rows).view(np.dtype((np.void, d * rows.itemsize))).reshape(-1)
        _, first, inverse = np.unique(v, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
    return first, inverse


class _VectorColumn:
    """One float list feature gathered chunk by chunk, each distinct vector stored once: a ``(u, d)``
    float32 table and an ``(n,)`` int32 row -> table index (-1 where null or empty). A training set
    repeats vectors heavily (an item's embedding on every row of that item, a user's sequence
    embedding on the positive and its negatives), so the table is a fraction of the ``(n, d)`` matrix.
    Falls back to per-row float32 arrays when the lengths vary."""

    def __init__(self, name: str, n: int):
        self.name, self.n = name, n
        self.dim: int | None = None
        self.index = np.full(n, -1, np.int32)
        self.blocks: list[np.ndarray] = []
        self.count = 0
        self.keys: dict[bytes, int] = {}   # blake2b-128 digest of a vector's bytes -> table row
        self.rows: list | None = None      # ragged fallback: one value per row

    def add(self, start: int, column) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if pa.types.is_dictionary(arr.type):
            arr = arr.dictionary_decode()
        if pa.types.is_fixed_size_list(arr.type):
            arr = arr.cast(pa.list_(arr.type.value_type))
        lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
        widths = np.unique(lengths[lengths > 0])
        if self.rows is None and (len(widths) > 1 or (len(widths) and self.dim not in (None, int(widths[0])))):
            self._to_rows()
        if self.rows is not None:
            self.rows[start:start + len(arr)] = [_list_value(v, False) for v in arr.to_pylist()]
            return
        if not len(widths):
            return
        self.dim = int(widths[0])
        ok = np.flatnonzero(lengths == self.dim)
        flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        self._put(start + ok, flat.reshape(-1, self.dim))

    def _put(self, positions: np.ndarray, rows: np.ndarray) -> None:
        import hashlib

        first, inverse = _distinct_rows(rows)
        ids = np.empty(len(first), np.int32)
        new = []
        for j, f in enumerate(first):
            key = hashlib.blake2b(rows[f].tobytes(), digest_size=16).digest()
            at = self.keys.get(key)
            if at is None:
                at = self.keys[key] = self.count + len(new)
                new.append(f)
            ids[j] = at
        if new:
            self.blocks.append(rows[np.asarray(new)])
            self.count += len(new)
        self.index[positions] = ids[inverse]

    def table(self) -> np.ndarray:
        """The distinct vectors, ``(u, d)`` float32."""
        if len(self.blocks) > 1:
            self.blocks = [np.concatenate(self.blocks)]
        return self.blocks[0] if self.blocks else np.zeros((0, self.dim or 0), np.float32)

    def _to_rows(self) -> None:
        table = self.table()
        self.rows = [table[i].copy() if i >= 0 else None for i in self.index]
        self.blocks, self.keys = [], {}

    def series(self, index) -> pd.Series:
        from recfeast import io

        if self.rows is not None:
            return pd.Series(self.rows, index=index, dtype=object)
        if self.dim is None:   # only nulls and empty lists: no width to give the column
            return pd.Series([None] * self.n, index=index, dtype=object)
        return io.indexed_vector_series(self.table(), self.index, index=index)


def _list_value(v, strings: bool):
    """A joined list value: a column of strings (tags) -> list of str, of numbers -> float32 array
    (``[]`` kept either way); anything that is not a list -> None."""
    if not isinstance(v, (list, np.ndarray)):
        return None
    return [str(x) for x in v] if strings else np.asarray(list(v), np.float32)


def save_training_set(frame: pd.DataFrame, info: TrainingSetInfo, path: Path, rows_per_group: int = CHUNK_ROWS) -> None:
    """Write the set as Parquet (vectors as ``list<float32>``, ``info`` in the schema metadata under
    ``recfeast``) and ``info`` as ``<path>.json``; both atomically.

    Written ``rows_per_group`` rows at a time (one Parquet row group each), so that memory holds one
    group's expanded vectors, not the whole ``(n, d)`` matrices the file stores (about 8 KB a row on
    MovieLens with the posters). Vector columns are written as plain ``list<float32>`` rather than
    fixed-size lists: pyarrow 25 cannot read back a Parquet ``fixed_size_list`` column holding a null
    row. :func:`load_training_set` restores the fixed width from ``info.vectors``."""
    import pyarrow.parquet as pq

    from recfeast import io

    def fixed_width(s):   # float32 vectors of one width: the fast vector path; ragged/string lists: plain lists
        widths = {len(v) for v in s if isinstance(v, np.ndarray)}
        return s.dtype == object and len(widths) == 1 and all(v is None or isinstance(v, np.ndarray) for v in s)

    vec = [c for c in frame.columns if fixed_width(frame[c])]
    meta = json.dumps(asdict(info), default=str).encode()
    step = max(int(rows_per_group), 1)

    def write(tmp):
        writer = None
        try:
            for start in range(0, max(len(frame), 1), step):
                table = io.to_arrow(frame.iloc[start:start + step], vec)
                if writer is None:
                    schema = table.schema.with_metadata({**(table.schema.metadata or {}), b"recfeast": meta})
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(table.cast(schema))
        finally:
            if writer is not None:
                writer.close()

    io.atomic_write_bytes(Path(path), write)
    io.write_json(Path(str(path) + ".json"), asdict(info))


def save_entity_rows(entity_df: pd.DataFrame, info: TrainingSetInfo, path: Path) -> None:
    """Write what a training set was built from, the light way to keep it: the entity rows (keys,
    ``event_timestamp``, labels, split) as Parquet with ``info`` in the schema metadata under
    ``recfeast`` (a few MB where the joined set with its vectors takes about 8 KB a row).
    ``get_training_set(store, rows, info["feature_service"], allow_values_created_later=...)``
    rebuilds the same set as long as the tables keep their history (values created later stay hidden)."""
    import pyarrow.parquet as pq

    from recfeast import io

    table = io.to_arrow(entity_df.reset_index(drop=True))
    meta = json.dumps(asdict(info), default=str)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), b"recfeast": meta.encode()})
    io.atomic_write_bytes(Path(path), lambda p: pq.write_table(table, p))


def load_training_set(path: Path) -> tuple[pd.DataFrame, dict]:
    """Read a set written by :func:`save_training_set` (or the entity rows of :func:`save_entity_rows`):
    ``(frame, info dict)``, the vector columns of ``info["vectors"]`` stored once per distinct vector
    as :func:`get_training_set` returns them (read one row group at a time)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = pq.ParquetFile(path)
    info = json.loads((f.schema_arrow.metadata or {}).get(b"recfeast", b"{}"))
    n = f.metadata.num_rows
    vec = [c for c in (info.get("vectors") or {}) if c in f.schema_arrow.names]
    columns = {c: _VectorColumn(c, n) for c in vec}
    parts, start = [], 0
    for g in range(f.num_row_groups):
        table = f.read_row_group(g)
        for c, column in columns.items():
            column.add(start, table.column(c))
        parts.append(table.drop_columns(vec))
        start += table.num_rows
    rest = pa.concat_tables(parts) if parts else f.schema_arrow.empty_table().drop_columns(vec)
    frame = rest.to_pandas()
    for c, column in columns.items():
        frame[c] = column.series(frame.index)
    return frame[f.schema_arrow.names], info
