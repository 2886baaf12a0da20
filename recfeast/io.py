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


def to_arrow(df: pd.DataFrame, vector_cols=()) -> pa.Table:
    """DataFrame -> Arrow table; ``vector_cols`` hold ``(d,)`` arrays and become ``list<float32>``;
    tz-aware timestamps become ``timestamp[us, UTC]``."""
    arrays, names = [], []
    for col in df.columns:
        s = df[col]
        if col in vector_cols:
            dim = next((len(v) for v in s if v is not None and not (isinstance(v, float) and np.isnan(v))), 0)
            mat = np.stack([np.full(dim, np.nan, np.float32) if v is None else np.asarray(v, np.float32)
                            for v in s]) if len(s) else np.zeros((0, dim), np.float32)
            arrays.append(vector_array(mat))
        elif isinstance(s.dtype, pd.DatetimeTZDtype):
            arrays.append(pa.array(s.dt.tz_convert("UTC").astype("datetime64[us, UTC]")))
        else:
            arrays.append(pa.array(s, from_pandas=True))
        names.append(col)
    return pa.Table.from_arrays(arrays, names=names)


def _vector_bytes(v) -> bytes | None:
    """Bytes of a vector: float vectors as float32 (tables store them so), integer lists as int64."""
    if v is None:
        return None
    a = np.asarray(v)
    return a.astype(np.float32 if a.dtype.kind == "f" else np.int64).tobytes()


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


def write_feature_table(df: pd.DataFrame, path: Path, key_cols: list[str], run_ts: pd.Timestamp,
                        vector_cols=(), on_stale=None) -> dict:
    """Write a feature table atomically, keeping ``created_timestamp`` of rows that did not change.

    A row whose ``key_cols`` and values equal a row of the existing table keeps that row's
    ``created_timestamp``; new or changed rows get ``run_ts``. So a rerun on the same input writes
    the same table, and ``created_timestamp`` says when each value was first written.

    Returns:
        ``{"rows", "new_or_changed", "unchanged"}`` counts and ``stale_entities``: keys whose latest
        row changed or disappeared (their online rows must be cleared before the next load);
        ``on_stale(stale_entities)`` is called before the file is replaced.

    Raises:
        DataError: the existing table is damaged (the message says to delete it).
    """
    df = df.reset_index(drop=True).copy()
    digest = row_digest(df)
    created = pd.Series(pd.Timestamp(run_ts).tz_convert("UTC"), index=df.index, dtype="datetime64[ns, UTC]")
    unchanged, stale = 0, []
    if Path(path).is_file():
        try:
            old = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a damaged file
            raise DataError(f"{path}: existing feature table cannot be read ({exc}); delete it and rerun "
                            "(it is rebuilt from the raw data)") from exc
        if set(old.columns) == set(df.columns) | {"created_timestamp"}:
            old_digest_s = row_digest(old[list(df.columns)])
            old_digest = dict(zip(old_digest_s, old["created_timestamp"]))
            hit = digest.map(old_digest)
            created = hit.where(hit.notna(), created).astype("datetime64[ns, UTC]")
            unchanged = int(hit.notna().sum())
            stale = changed_entities(old, df, key_cols[0], old_digest_s, digest)
        else:  # schema changed: every entity's online row is rewritten
            stale = sorted(int(k) for k in old[key_cols[0]].unique())
    df["created_timestamp"] = created
    ordered = key_cols + ["created_timestamp"] + [c for c in df.columns if c not in key_cols + ["created_timestamp"]]
    table = to_arrow(df[ordered], vector_cols)
    if on_stale is not None:
        on_stale(stale)  # recorded before the table changes: a kill in between loses nothing
    atomic_write_bytes(path, lambda p: pq.write_table(table, p))
    return {"rows": len(df), "new_or_changed": len(df) - unchanged, "unchanged": unchanged, "stale_entities": stale}
