"""Atomic, idempotent Parquet and JSON writes."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from recfeast import faults
from recfeast.errors import DataError


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        faults.point(f"before_replace:{path.name}")
        os.replace(tmp, path)
        faults.point(f"after_replace:{path.name}")
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def remove_stale_temp_files(folder: Path, older_than_s: float = 600) -> int:
    """Delete the temporary files of :func:`atomic_write_bytes` left in ``folder`` by a killed writer.

    Only files older than ``older_than_s`` go (a live writer's temporary file lives for the seconds
    its write takes). Returns how many were deleted."""
    import time

    n, limit = 0, time.time() - older_than_s
    for tmp in Path(folder).glob(".*.tmp"):
        try:
            if tmp.stat().st_mtime < limit:
                tmp.unlink()
                n += 1
        except FileNotFoundError:
            pass
    return n


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    atomic_write_bytes(path, lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"))


def vector_array(matrix: np.ndarray) -> pa.Array:
    """``(n, d)`` array -> Arrow ``list<float32>``; rows with any NaN become null."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    n, d = m.shape
    offsets = pa.array((np.arange(n + 1) * d).astype(np.int32))
    mask = np.isnan(m).any(axis=1) if n else np.zeros(0, bool)
    arr = pa.ListArray.from_arrays(offsets, pa.array(m.reshape(-1), type=pa.float32()),
                                   mask=pa.array(mask) if mask.any() else None)
    return arr


def vector_series(matrix: np.ndarray, present: np.ndarray | None = None, index=None, name=None) -> pd.Series:
    """``(n, d)`` float32 matrix -> a Series of ``pd.ArrowDtype(fixed_size_list<float32>[d])``, the
    compact form of a vector column: one buffer, no Python object per row. A C-contiguous float32
    matrix is wrapped without a copy (keep it unchanged afterwards); rows whose ``present`` is False
    become null (their values should be zeros: :func:`vector_view` hands the buffer back as it is)."""
    m = np.ascontiguousarray(matrix, dtype=np.float32)
    n, d = m.shape
    mask = None if present is None or bool(np.all(present)) else pa.array(~np.asarray(present, bool))
    arr = pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1)), d, mask=mask)
    return pd.Series(pd.arrays.ArrowExtensionArray(arr), index=index, name=name, copy=False)


def indexed_vector_series(table: np.ndarray, rows: np.ndarray, index=None, name=None) -> pd.Series:
    """Vectors stored once per distinct value: a Series of ``pd.ArrowDtype(dictionary<int32,
    fixed_size_list<float32>[d]>)`` whose row ``i`` is ``table[rows[i]]`` (null where ``rows[i] < 0``).
    ``table``: ``(u, d)`` float32, wrapped without a copy when C-contiguous; ``rows``: ``(n,)`` int."""
    t = np.ascontiguousarray(table, dtype=np.float32)
    r = np.asarray(rows, np.int32)
    dictionary = pa.FixedSizeListArray.from_arrays(pa.array(t.reshape(-1)), t.shape[1])
    indices = pa.array(np.where(r < 0, 0, r).astype(np.int32), mask=(r < 0) if (r < 0).any() else None)
    arr = pa.DictionaryArray.from_arrays(indices, dictionary)
    return pd.Series(pd.arrays.ArrowExtensionArray(arr), index=index, name=name, copy=False)


def _vector_type(values):
    dtype = getattr(values, "dtype", None)
    if not isinstance(dtype, pd.ArrowDtype):
        return None
    typ = dtype.pyarrow_dtype
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return typ if pa.types.is_fixed_size_list(typ) and pa.types.is_floating(typ.value_type) else None


def is_vector_series(values) -> bool:
    """True for a Series of Arrow ``fixed_size_list`` of floats, plain (:func:`vector_series`) or
    dictionary-encoded (:func:`indexed_vector_series`)."""
    return _vector_type(values) is not None


def vector_width(values) -> int:
    """The ``d`` of a :func:`is_vector_series` Series.

    Raises:
        TypeError: ``values`` is not such a Series.
    """
    typ = _vector_type(values)
    if typ is None:
        raise TypeError(f"expected a fixed_size_list<float> Arrow column, got {getattr(values, 'dtype', type(values))}")
    return typ.list_size


def _one_array(values):
    chunked = values.array.__arrow_array__()
    if chunked.num_chunks == 1:
        return chunked.chunk(0)
    if pa.types.is_dictionary(chunked.type):   # chunks with their own dictionaries: unify, else decode
        try:
            chunked = chunked.unify_dictionaries()
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
            chunked = pa.chunked_array([c.dictionary_decode() for c in chunked.chunks], chunked.type.value_type)
    return chunked.combine_chunks()


def _fsl_matrix(arr) -> np.ndarray:
    d = arr.type.list_size
    child = arr.values.slice(arr.offset * d, len(arr) * d)
    return child.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), d)


def vector_rows(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A :func:`is_vector_series` Series -> ``(table (u, d) float32, rows (n,) int64)``: row ``i`` is
    ``table[rows[i]]``, missing where ``rows[i] < 0``. For a dictionary-encoded Series the table is
    its dictionary (a read-only view, no copy); for a plain one it is the ``(n, d)`` buffer itself.

    Raises:
        TypeError: ``values`` is not such a Series.
    """
    vector_width(values)
    arr = _one_array(values)
    if pa.types.is_dictionary(arr.type):
        rows = arr.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        return _fsl_matrix(arr.dictionary), rows
    rows = np.arange(len(arr), dtype=np.int64)
    if arr.null_count:
        rows[~arr.is_valid().to_numpy(zero_copy_only=False)] = -1
    return _fsl_matrix(arr), rows


def vector_view(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A :func:`is_vector_series` Series -> ``((n, d) float32, (n,) bool present)``, zeros where a
    row is null. For a plain Series in one float32 chunk whose null rows hold zeros (what
    :func:`vector_series`, slices and Arrow's ``take`` give) no copy: the matrix is then a read-only
    view of the Arrow buffer. A dictionary-encoded Series is expanded (a new ``(n, d)`` array).

    Raises:
        TypeError: ``values`` is not such a Series.
    """
    vector_width(values)
    arr = _one_array(values)
    if pa.types.is_dictionary(arr.type):
        table, rows = vector_rows(values)
        present = rows >= 0
        matrix = table[np.where(present, rows, 0)] if len(table) else np.zeros((len(rows), table.shape[1]), np.float32)
        matrix[~present] = 0
        return matrix, present
    matrix = _fsl_matrix(arr)
    present = np.ones(len(arr), bool) if arr.null_count == 0 else arr.is_valid().to_numpy(zero_copy_only=False)
    if not present.all() and matrix[~present].any():
        matrix = np.where(present[:, None], matrix, np.float32(0))
    return matrix, present


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def check_list_column(s: pd.Series, fixed_width: bool = False) -> None:
    """Refuse list values Feast cannot store: a ``None`` inside a list (Feast's ``*List`` protos have
    no null element), a non-list value among lists, and with ``fixed_width`` (an embedding column,
    ``(d,)`` float vectors) vectors of different lengths or with non-numbers.

    Raises:
        DataError: naming the column, the first bad row and what was expected.
    """
    width = None
    for row, v in zip(s.index, s):
        if _is_missing(v):
            continue
        if not isinstance(v, (list, tuple, np.ndarray)):
            raise DataError(f"column {s.name!r}, row {row}: {type(v).__name__} value {v!r} in a list column "
                            "(expected a list, or None for no value)")
        if isinstance(v, np.ndarray) and v.dtype.kind in "fiu":   # the fast path: numeric arrays (embeddings)
            if fixed_width:
                width = len(v) if width is None else width
                if len(v) != width:
                    raise DataError(f"column {s.name!r}, row {row}: vector of length {len(v)}, earlier rows have "
                                    f"{width} (an embedding column holds (d,) vectors of one width; use None for no vector)")
            continue
        a = np.asarray(v, dtype=object) if not isinstance(v, np.ndarray) else v
        if a.dtype == object and any(_is_missing(x) if not isinstance(x, str) else False for x in a):
            raise DataError(f"column {s.name!r}, row {row}: a None inside a list ({list(v)[:5]}...): Feast's array "
                            "types cannot hold null elements; drop the element, or make the whole value None")
        if fixed_width:
            if not all(isinstance(x, (int, float, np.number)) and not isinstance(x, (bool, np.bool_)) for x in a):
                raise DataError(f"column {s.name!r}, row {row}: vector holding non-numbers ({list(a)[:3]}...); an "
                                "embedding column holds numbers only")
            if width is None:
                width = len(a)
            elif len(a) != width:
                raise DataError(f"column {s.name!r}, row {row}: vector of length {len(a)}, earlier rows have {width} "
                                "(an embedding column holds (d,) vectors of one width; use None for no vector)")


def _list_array(s: pd.Series) -> pa.Array:
    """A variable-length list column (tags, empty lists) -> Arrow list; numbers as float32/int64."""
    vals = [None if _is_missing(v) else list(np.asarray(v).tolist()) for v in s]
    flat = [x for v in vals if v for x in v]
    if flat and all(isinstance(x, str) for x in flat):
        typ = pa.list_(pa.string())
    elif flat and all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in flat):
        typ = pa.list_(pa.int64())
    elif flat and all(isinstance(x, bool) for x in flat):
        typ = pa.list_(pa.bool_())
    elif flat and all(isinstance(x, (int, float, np.number)) for x in flat):
        typ = pa.list_(pa.float32())
    elif not flat:
        typ = pa.list_(pa.float32())   # only empty lists / None: nothing says otherwise
    else:
        raise DataError(f"column {s.name!r}: lists mixing types {sorted({type(x).__name__ for x in flat})}")
    return pa.array(vals, type=typ)


def _vector_matrix(s: pd.Series) -> np.ndarray:
    """An embedding column -> ``(n, d)`` float32, NaN rows where missing; one pass over the rows for
    the usual case (numeric arrays of one width), :func:`check_list_column` for anything else."""
    rows, width, checked = [], None, False
    for v in s:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            rows.append(None)
            continue
        if not (isinstance(v, np.ndarray) and v.dtype.kind in "fiu" and v.ndim == 1
                and (width is None or len(v) == width)) and not checked:
            check_list_column(s, fixed_width=True)   # raises, naming the row, unless it is a plain list of numbers
            checked = True
        width = len(v) if width is None else width
        rows.append(v)
    dim = width or 0
    if not len(rows):
        return np.zeros((0, dim), np.float32)
    empty = np.full(dim, np.nan, np.float32)
    return np.stack([empty if v is None else np.asarray(v, np.float32) for v in rows])


def to_arrow(df: pd.DataFrame, vector_cols=()) -> pa.Table:
    """DataFrame -> Arrow table; ``vector_cols`` hold ``(d,)`` float arrays of one width and become
    ``list<float32>`` (NaN rows: null), as do columns of :func:`vector_series`; other list columns (tags, variable length, ``[]``) become
    Arrow lists of their element type; tz-aware timestamps become ``timestamp[us, UTC]``.

    Raises:
        DataError: a list with a ``None`` inside, vectors of two widths in a ``vector_cols`` column,
            lists mixing element types (see :func:`check_list_column`), naming the column and row.
    """
    arrays, names = [], []
    for col in df.columns:
        s = df[col]
        is_list = s.dtype == object and any(isinstance(v, (list, tuple, np.ndarray)) for v in s)
        if is_vector_series(s):   # Parquet readers refuse null fixed_size_list rows (pyarrow 25): plain lists
            arr = _one_array(s)
            arr = arr.dictionary_decode() if pa.types.is_dictionary(arr.type) else arr
            arrays.append(arr.cast(pa.list_(pa.float32())))
        elif col in vector_cols:
            arrays.append(vector_array(_vector_matrix(s)))
        elif is_list:
            check_list_column(s)
            arrays.append(_list_array(s))
        elif isinstance(s.dtype, pd.DatetimeTZDtype):
            arrays.append(pa.array(s.dt.tz_convert("UTC").astype("datetime64[us, UTC]")))
        else:
            arrays.append(pa.array(s, from_pandas=True))
        names.append(col)
    return pa.Table.from_arrays(arrays, names=names)


def _vector_bytes(v) -> bytes | None:
    """Bytes of a list value: float vectors as float32 (tables store them so), integer lists as int64,
    anything else (strings, tags) as its JSON text."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return None
    a = np.asarray(v)
    if a.dtype.kind in "fiub":
        return a.astype(np.float32 if a.dtype.kind == "f" else np.int64).tobytes()
    return json.dumps([x if isinstance(x, str) else str(x) for x in a.tolist()]).encode()


def row_digest(df: pd.DataFrame, exclude=("created_timestamp",)) -> pd.Series:
    """uint64 hash of each row's values (vectors by their float32 bytes), ``exclude`` left out."""
    cols = {}
    for col in df.columns:
        if col in exclude:
            continue
        s = df[col]
        if s.dtype == object and len(s) and any(isinstance(v, (np.ndarray, list)) for v in s.head(50)):
            cols[col] = s.map(_vector_bytes)
        elif isinstance(s.dtype, pd.DatetimeTZDtype):
            cols[col] = s.astype("datetime64[ns, UTC]")
        else:
            cols[col] = s
    return pd.util.hash_pandas_object(pd.DataFrame(cols), index=False)


def changed_entities(old: pd.DataFrame | None, new: pd.DataFrame, key: str, digest_old, digest_new) -> list[int]:
    """Entities whose latest row differs between ``old`` and ``new`` tables, or that left the table.

    ``digest_*`` are per-row value hashes (``io.row_digest``) aligned with the frames.
    """
    if old is None or old.empty:
        return []

    def latest(df, digest):
        d = df[[key, "event_timestamp"]].assign(_d=digest.to_numpy())
        d = d.sort_values([key, "event_timestamp"], kind="stable").groupby(key).tail(1)
        return dict(zip(d[key], zip(d["event_timestamp"].astype("datetime64[ns, UTC]"), d["_d"])))

    a, b = latest(old, digest_old), latest(new, digest_new)
    return sorted(int(k) for k, v in a.items() if b.get(k) != v)


#: Parquet schema metadata key marking tables whose ``created_timestamp`` means availability time
CREATED_META = b"recfeast.created_timestamp"


def write_feature_table(df: pd.DataFrame, path: Path, key_cols: list[str], run_ts: pd.Timestamp,
                        vector_cols=(), on_stale=None, available: str | None = None, version_cols=()) -> dict:
    """Write a feature table atomically with a ``created_timestamp`` that says when each value became
    available, so a point-in-time join that ignores values created after its row
    (``recfeast.training.dataset.get_training_set``'s default) never sees the future yet keeps history.

    ``created_timestamp`` of each row:

    - a row equal (keys and values) to a row of the existing table keeps that row's timestamp, so a
      rerun on the same input writes the same table;
    - with ``available`` (a column name, e.g. ``"event_timestamp"`` for aggregates computed from
      events: the time of the last event that produced the value): a row seen for the first time gets
      that column's time (capped at ``run_ts``); a row whose keys (``key_cols`` plus
      ``version_cols``, e.g. the embedding model identity) were in the existing table with other
      values is a late correction and gets ``run_ts``, the processing time: it is invisible to
      examples before the run. A new model identity is a new version, not a correction: its rows get
      their availability time (the model column tells versions apart; training refuses a mix);
    - without ``available`` (live or ingested rows): ``run_ts``, the processing time.

    Tables written before this rule (no ``recfeast.created_timestamp`` marker in the Parquet schema
    metadata) are re-stamped by it on their next write.

    Returns:
        ``{"rows", "new_or_changed", "unchanged"}`` counts, ``corrections`` (rows stamped ``run_ts``
        because they changed an existing row) and ``stale_entities``: keys whose latest row changed or
        disappeared (their online rows must be cleared before the next load);
        ``on_stale(stale_entities)`` is called before the file is replaced.

    Raises:
        DataError: the existing table is damaged (the message says to delete it), ``available`` is
            not a tz-aware column of ``df``, or a list column holds values Feast cannot store
            (:func:`to_arrow`).
    """
    df = df.reset_index(drop=True).copy()
    run_ts = pd.Timestamp(run_ts).tz_convert("UTC")
    digest = row_digest(df)
    if available is not None:
        if available not in df.columns or not pd.api.types.is_datetime64_any_dtype(df[available].dtype):
            raise DataError(f"{path}: available={available!r} must name a timestamp column of the table "
                            f"(columns: {list(df.columns)})")
        avail = pd.to_datetime(df[available], utc=True).astype("datetime64[ns, UTC]").clip(upper=run_ts)
        created = avail.where(avail.notna(), run_ts).astype("datetime64[ns, UTC]")
    else:
        created = pd.Series(run_ts, index=df.index, dtype="datetime64[ns, UTC]")
    unchanged, stale, corrections = 0, [], 0
    if Path(path).is_file():
        try:
            old = pd.read_parquet(path)
            marked = CREATED_META in (pq.read_schema(path).metadata or {})
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a damaged file
            raise DataError(f"{path}: existing feature table cannot be read ({exc}); delete it and rerun "
                            "(it is rebuilt from the raw data)") from exc
        if set(old.columns) == set(df.columns) | {"created_timestamp"}:
            old_digest_s = row_digest(old[list(df.columns)])
            stale = changed_entities(old, df, key_cols[0], old_digest_s, digest)
            if marked or available is None:
                old_digest = dict(zip(old_digest_s, old["created_timestamp"]))
                hit = digest.map(old_digest)
                unchanged = int(hit.notna().sum())
                if available is not None:
                    ids = [c for c in (*key_cols, *version_cols) if c in df.columns]

                    def keys(frame):
                        return pd.MultiIndex.from_frame(pd.DataFrame({
                            c: pd.to_datetime(frame[c], utc=True).astype("datetime64[ns, UTC]")
                            if pd.api.types.is_datetime64_any_dtype(frame[c].dtype) else frame[c] for c in ids}))
                    seen, mine = keys(old), keys(df)
                    corrected = pd.Series(mine.isin(seen), index=df.index) & hit.isna()
                    created = created.where(~corrected, run_ts)
                    corrections = int(corrected.sum())
                created = hit.where(hit.notna(), created).astype("datetime64[ns, UTC]")
        else:  # schema changed: every entity's online row is rewritten
            stale = sorted(int(k) for k in old[key_cols[0]].unique())
    df["created_timestamp"] = created.astype("datetime64[ns, UTC]")
    ordered = key_cols + ["created_timestamp"] + [c for c in df.columns if c not in key_cols + ["created_timestamp"]]
    table = to_arrow(df[ordered], vector_cols)
    if available is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), CREATED_META: b"available"})
    if on_stale is not None:
        on_stale(stale)  # recorded before the table changes: a kill in between loses nothing
    atomic_write_bytes(path, lambda p: pq.write_table(table, p))
    return {"rows": len(df), "new_or_changed": len(df) - unchanged, "unchanged": unchanged,
            "corrections": corrections, "stale_entities": stale}
