"""Adapter for folders already in the canonical schema: ``items``, ``users``, ``events`` files.

Each is ``<name>.parquet`` or ``<name>.csv`` (UTF-8, header). ``genres`` in CSV is ``|``-separated.
Missing optional columns are added as nulls; a missing required column is an error. ``source`` is
filled with ``<file>:<line>`` (CSV: the record number + 1, i.e. the file line when no field spans
lines, header = 1; Parquet: the row number + 1).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from recfeast.errors import DataError
from recfeast.schema import EVENT_COLUMNS, ITEM_COLUMNS, USER_COLUMNS, Catalog

REQUIRED = {
    "items": ("item_id", "title"),
    "users": ("user_id",),
    "events": ("user_id", "item_id", "value", "event_timestamp"),
}
COLUMNS = {"items": ITEM_COLUMNS, "users": USER_COLUMNS, "events": EVENT_COLUMNS}


def _find(data_dir: Path, name: str) -> Path | None:
    for ext in (".parquet", ".csv"):
        if (data_dir / f"{name}{ext}").is_file():
            return data_dir / f"{name}{ext}"
    return None


def looks_canonical(data_dir: Path) -> bool:
    """True when ``data_dir`` holds ``items``, ``users`` and ``events`` as Parquet or CSV."""
    return all(_find(Path(data_dir), n) for n in COLUMNS)


def _read_one(data_dir: Path, name: str) -> pd.DataFrame:
    path = _find(data_dir, name)
    if path is None:
        raise DataError(f"{data_dir}: no {name}.parquet or {name}.csv")
    try:
        if path.suffix == ".csv":
            df = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
            first_line = 2
        else:
            df = pd.read_parquet(path)
            first_line = 1
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file; expected a header line with columns {COLUMNS[name]}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-encode it as UTF-8") from exc
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as {path.suffix[1:].upper()}: {exc}") from exc
    missing = [c for c in REQUIRED[name] if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing required column(s) {missing}; canonical columns: {COLUMNS[name]}")
    df = df.reset_index(drop=True)
    df["source"] = [f"{path.name}:{i + first_line}" for i in range(len(df))]
    for col in COLUMNS[name]:
        if col not in df.columns:
            df[col] = "rate" if col == "action" else None
    if name == "items":
        df["genres"] = [
            g if isinstance(g, (list, tuple)) else
            ([] if g is None or (isinstance(g, float) and pd.isna(g)) else
             [s for s in (list(g) if hasattr(g, "tolist") else str(g).split("|")) if s])
            for g in df["genres"]
        ]
        for col in ("runtime_min", "enrichment_confidence"):
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df[list(COLUMNS[name])]


def read(data_dir: Path, rating_scale: tuple[float, float] = (1.0, 5.0)) -> Catalog:
    """Read canonical files from ``data_dir``.

    Raises:
        DataError: a file or a required column is missing.
    """
    data_dir = Path(data_dir)
    return Catalog(
        items=_read_one(data_dir, "items"), users=_read_one(data_dir, "users"),
        events=_read_one(data_dir, "events"), data_dir=data_dir, rating_scale=rating_scale,
    )
