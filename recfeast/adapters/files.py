"""The generic adapter: read a catalog's items, users and events files as its spec's ``source`` says.

Each source is a file or a glob (CSV, TSV, Parquet, JSON lines) relative to the data folder; its
columns are renamed to recfeast's field names by ``columns`` and ``constants`` add fixed fields. Values
stay as read (strings where the file has strings): :mod:`recfeast.cleaning` parses and validates them
against the spec and quarantines what fails. Every row carries ``source`` = ``<file>:<line>`` (CSV: the
file line, header = 1; Parquet/JSON lines: the row number + 1).
"""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

from recfeast.errors import DataError
from recfeast.schema import Catalog
from recfeast.spec import CatalogSpec, SourceSpec


def _files(data_dir: Path, src: SourceSpec) -> list[Path]:
    pattern = src.path if Path(src.path).is_absolute() else str(data_dir / src.path)
    paths = sorted(Path(p) for p in glob.glob(pattern))
    if not paths:
        raise DataError(f"{pattern}: no file matches (catalog spec source path {src.path!r})")
    return paths


def _read_file(path: Path, src: SourceSpec) -> tuple[pd.DataFrame, int]:
    fmt = src.file_format()
    try:
        if fmt in ("csv", "tsv"):
            sep = src.separator or ("\t" if fmt == "tsv" else ",")
            df = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding=src.encoding,
                             header=0 if src.header else None, names=src.names if src.names else None,
                             engine="python" if len(sep) > 1 else "c")
            return df, 2 if src.header else 1
        if fmt == "parquet":
            return pd.read_parquet(path), 1
        return pd.read_json(path, lines=True, dtype=False), 1
    except pd.errors.EmptyDataError as exc:
        raise DataError(f"{path}: empty file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not {src.encoding} text ({exc.reason} at byte {exc.start}); "
                        "set encoding: in the spec's source") from exc
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot be read as {fmt.upper()}: {exc}") from exc


def read_source(data_dir: Path, src: SourceSpec, needed: list[str], table: str) -> pd.DataFrame:
    """Read every file of ``src`` into one frame with recfeast's field names and ``source``.

    Args:
        needed: the fields the spec uses from this table; each must be a mapped column, a column of
            the same name or a constant.

    Raises:
        DataError: no file matches, a file cannot be read, or a needed field is missing (the message
            names the file, the field and the columns found).
    """
    frames = []
    for path in _files(Path(data_dir), src):
        df, first = _read_file(path, src)
        rename = {col: field for field, col in src.columns.items()}
        missing = [f for f in needed if f not in src.constants and src.columns.get(f, f) not in df.columns]
        if missing:
            wanted = {f: src.columns.get(f, f) for f in missing}
            raise DataError(f"{path}: {table} field(s) {missing} named in the catalog spec are not in the file (looked "
                            f"for column(s) {list(wanted.values())}); the file has columns {list(df.columns)[:30]}. "
                            f"Fix the name in the spec's {table} section, or map it under {table}.source.columns "
                            "({field: file column})")
        keep = [c for c in df.columns if c in rename or c in needed]
        df = df[keep].rename(columns=rename).reset_index(drop=True)
        for field, value in src.constants.items():
            df[field] = value
        df["source"] = [f"{path.name}:{i + first}" for i in range(len(df))]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def item_fields(spec: CatalogSpec) -> list[str]:
    """Item fields the spec reads (the key first)."""
    it = spec.items
    out = [spec.item.key]
    if it.title:
        out.append(it.title)
    if it.text:
        out += it.text.fields
    if it.image and it.image.field:
        out.append(it.image.field)
    out += [c.field for c in it.categorical] + [n.field for n in it.numeric]
    if it.available_from:
        out.append(it.available_from)
    if it.trust:
        out.append(it.trust.field)
    if it.image and it.image.template:
        import string

        out += [f for _, f, _, _ in string.Formatter().parse(it.image.template) if f]
    return list(dict.fromkeys(out))


def user_fields(spec: CatalogSpec) -> list[str]:
    """User fields the spec reads (the key first)."""
    us = spec.users
    return list(dict.fromkeys([spec.user.key] + [c.field for c in us.categorical] + [n.field for n in us.numeric]))


def event_fields(spec: CatalogSpec) -> list[str]:
    """Event fields the spec reads: keys, time, type (unless defaulted) and every type's value field."""
    ev = spec.events
    out = [spec.user.key, spec.item.key, ev.timestamp.field]
    if ev.default_type is None:
        out.append(ev.type_field)
    out += sorted({t.value.field for t in ev.types.values() if t.value is not None})
    return list(dict.fromkeys(out))


def read(data_dir: Path, spec: CatalogSpec) -> Catalog:
    """Read the three tables of ``spec`` from ``data_dir`` (users: from the events when no source).

    Raises:
        DataError: as :func:`read_source`.
    """
    data_dir = Path(data_dir)
    items = read_source(data_dir, spec.items.source, item_fields(spec), "items")
    events_src = spec.events.source
    needed = event_fields(spec)
    if spec.events.default_type is not None and spec.events.type_field not in events_src.constants:
        needed_opt = spec.events.type_field
    else:
        needed_opt = None
    events = read_source(data_dir, events_src, needed, "events")
    if needed_opt and needed_opt not in events.columns:
        events[needed_opt] = None
    if spec.users.source is not None:
        users = read_source(data_dir, spec.users.source, user_fields(spec), "users")
    else:
        keys = events[spec.user.key]
        keys = keys[keys.notna() & (keys.astype(str).str.strip() != "")]   # bad ids are quarantined with their event
        users = pd.DataFrame({spec.user.key: keys.drop_duplicates().to_numpy()})
        users["source"] = "events"
    return Catalog(items=items, users=users, events=events, data_dir=data_dir, spec=spec)
