"""Cleaning: parse the tables read for a catalog, apply the spec's validation rules, quarantine what fails.

Every rule comes from the catalog spec (:mod:`recfeast.spec`). ``row_rejected`` drops the row,
``field_nulled`` keeps the row without the named field:

========================== ========= ============= ===============================================
rule                       table     action        when
========================== ========= ============= ===============================================
unparsable_id              any       row_rejected  an id is not an int64 (``dtype: int64``) or is an
                                                   empty string (``dtype: string``)
duplicate_item_id          items     row_rejected  second and later rows of one item id
duplicate_user_id          users     row_rejected  second and later rows of one user id
missing_title              items     row_rejected  ``items.title`` is declared and empty
low_enrichment_confidence  items     field_nulled  ``items.trust.field`` below ``trust.min``: the
                                                   ``trust.fields`` are another source's match that
                                                   may be another item's (MovieLens 72 carries Pulp
                                                   Fiction's text)
empty_<field>              items     field_nulled  a text field in ``text.report_missing`` is empty
<feature>_out_of_range     items/    field_nulled  a numeric value outside its ``valid`` range
                           users
unparsable_<field>         items/    field_nulled  a numeric/date value that does not parse
                           users
unparsable_timestamp       events    row_rejected  not the declared unit, or outside 1900..2262
unknown_event_type         events    row_rejected  the type is not declared in ``events.types``
missing_value              events    row_rejected  the type has a required value and it is empty
unparsable_value           events    row_rejected  value is not a finite number
value_out_of_range         events    row_rejected  value outside the type's ``scale``
value_off_step             events    row_rejected  value not on the type's ``step`` (e.g. 3.7 stars)
unknown_user               events    row_rejected  user id not in the (clean) users table
unknown_item               events    row_rejected  item id not in the (clean) items table
duplicate_event            events    row_rejected  repeat of an earlier event on ``events.duplicates``
========================== ========= ============= ===============================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from recfeast.schema import FIELD_NULLED, ROW_REJECTED, Catalog, Quarantine
from recfeast.spec import CatalogSpec, NumericSpec



@dataclass
class CleanCatalog:
    """Typed, validated tables (ids int64 or str as the spec declares).

    ``items``: item_id (unique), the spec's item fields parsed (numeric float64, multi-valued
    categoricals as ``list[str]``, single ones str|None, dates datetime64[ns, UTC]), ``text`` (the
    string the text encoder reads), ``image_path`` str|None (absolute), ``available_from``
    datetime64[ns, UTC] (NaT: unknown), ``enrichment_dropped`` bool; sorted by item_id.
    ``users``: user_id and the spec's user fields; sorted by user_id.
    ``events``: user_id, item_id, action str (the event type), value float64 (NaN: the type has no
    value), event_timestamp datetime64[ns, UTC], source; sorted by (event_timestamp, user_id, item_id)
    with file order kept among equals.
    """

    items: pd.DataFrame
    users: pd.DataFrame
    events: pd.DataFrame
    quarantine: Quarantine
    spec: CatalogSpec | None = None


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


_INT_RE = re.compile(r"[+-]?[0-9]+")
_ISO_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_NUM_RE = re.compile(r"[+-]?[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?")


def parse_int64_value(v) -> int | None:
    """One exact int64: an int, an integral float or a digit string; anything else (bools, 1.5,
    "7a", values outside int64) -> ``None``. Strings are parsed with ``int`` so ids above 2**53 keep
    every digit."""
    if v is None or v is pd.NA or isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, np.integer)):
        x = int(v)
    elif isinstance(v, (float, np.floating)):
        if not np.isfinite(v) or v != np.floor(v):
            return None
        x = int(v)
    else:
        text = str(v).strip()
        if text.endswith(".0"):
            text = text[:-2]
        if not _INT_RE.fullmatch(text) or len(text) > 25:   # ASCII digits only ("²" is a digit to isdigit)
            return None
        x = int(text)
    return x if INT64_MIN <= x <= INT64_MAX else None


def parse_int64(values: pd.Series) -> pd.Series:
    """Exact int64 parsing of a Series with :func:`parse_int64_value`; returns a nullable ``Int64`` Series."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.astype("Int64")
    out = pd.array([None] * len(values), dtype="Int64")
    text = values.astype("string").str.strip()
    fast = text.str.fullmatch(r"[+-]?[0-9]{1,18}").fillna(False).to_numpy(bool)   # always within int64
    if fast.any():
        out[fast] = text[fast].astype("int64").to_numpy()
    slow = np.flatnonzero(~fast)
    if len(slow):
        out[slow] = pd.array([parse_int64_value(values.iloc[i]) for i in slow], dtype="Int64")
    return out


def _parse_ids(df: pd.DataFrame, cols: list[str], table: str, q: Quarantine) -> pd.DataFrame:
    for col in cols:
        parsed = pd.Series(parse_int64(df[col]), index=df.index)
        bad = parsed.isna()
        if bad.any():
            q.add_frame(df[bad], table, "unparsable_id", ROW_REJECTED, None,
                        lambda r, c=col: f"{c}={r[c]!r} is not an integer in the int64 range")
        df = df[~bad].copy()
        df[col] = parsed[~bad].astype("int64")
    return df


def _dedupe_key(df: pd.DataFrame, key: str, table: str, q: Quarantine) -> pd.DataFrame:
    dup = df.duplicated(key, keep="first")
    if dup.any():
        q.add_frame(df[dup], table, f"duplicate_{key}", ROW_REJECTED, key,
                    lambda r: f"{key}={r[key]} already defined earlier")
    return df[~dup]


def _blank(s: pd.Series) -> pd.Series:
    return s.isna() | (s.astype("string").str.strip().fillna("") == "")


def _parse_key(df: pd.DataFrame, col: str, dtype: str, table: str, q: Quarantine) -> pd.DataFrame:
    """Parse one key column as the spec's dtype; bad rows -> ``unparsable_id``."""
    if dtype == "int64":
        return _parse_ids(df, [col], table, q)
    text = df[col].astype("string").str.strip()
    bad = text.isna() | (text == "")
    if bad.any():
        q.add_frame(df[bad], table, "unparsable_id", ROW_REJECTED, None,
                    lambda r, c=col: f"{c}={r[c]!r} is empty; expected a non-empty string id")
    df = df[~bad].copy()
    df[col] = text[~bad].astype(object).to_numpy()
    return df


def _split_multi(v, sep: str | None) -> list[str]:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return []
    if isinstance(v, (list, tuple, np.ndarray)):
        return [str(x).strip() for x in v if x is not None and str(x).strip()]
    text = str(v).strip()
    if not text:
        return []
    parts = text.split(sep) if sep else [text]
    return [p.strip() for p in parts if p.strip()]


def _numeric(df: pd.DataFrame, n: NumericSpec, table: str, key: str, q: Quarantine) -> pd.Series:
    """Parse a numeric field (``transform: year`` parses a date and takes its year); quarantine what
    fails to parse or lies outside ``valid``; returns float64 with NaN for unknown."""
    raw = df[n.field]
    if n.transform == "year":
        ts = raw if pd.api.types.is_datetime64_any_dtype(raw.dtype) else _parse_timestamps(
            raw.astype(object).where(raw.notna(), None))
        bad = raw.notna() & ts.isna()
        x = ts.dt.year.astype("float64")
    else:
        x = pd.to_numeric(raw, errors="coerce").astype("float64")
        bad = raw.notna() & (raw.astype("string").str.strip() != "") & x.isna()
    if bad.any():
        q.add_frame(df[bad], table, f"unparsable_{n.field}", FIELD_NULLED, key,
                    lambda r: f"{n.field}={r[n.field]!r}: expected " + ("a date" if n.transform == "year" else "a number"))
    if n.valid is not None:
        lo, hi = n.valid
        out = x.notna() & ~((x >= lo) & (x <= hi))
        if out.any():
            q.add_frame(df[out], table, f"{n.name}_out_of_range", FIELD_NULLED, key,
                        lambda r: f"{n.field}={r[n.field]!r} not in [{lo:g}, {hi:g}]")
        x = x.where(~out)
    return x


def _fields(df: pd.DataFrame, spec_part, table: str, key: str, q: Quarantine) -> pd.DataFrame:
    """Categorical and numeric fields of items or users, parsed in place."""
    for c in spec_part.categorical:
        if c.multi:
            df[c.field] = [_split_multi(v, c.separator) for v in df[c.field]]
        else:
            df[c.field] = df[c.field].where(~_blank(df[c.field]), None).astype(object)
            df[c.field] = [None if v is None else str(v).strip() for v in df[c.field]]
    for n in spec_part.numeric:
        df[n.name if n.transform == "year" and n.name != n.field else n.field] = _numeric(df, n, table, key, q)
    return df


def compose_text(df: pd.DataFrame, fields: list[str]) -> list[str]:
    """Each row's text: the fields in order, lists joined with ", ", joined with ". " (empty parts skipped)."""
    out = []
    for row in zip(*(df[f] for f in fields)):
        parts = []
        for v in row:
            if isinstance(v, (list, tuple, np.ndarray)):
                v = ", ".join(str(x) for x in v)
            if v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            v = str(v).strip().rstrip(".").strip()
            if v:
                parts.append(v)
        out.append(". ".join(parts) + ("." if parts else ""))
    return out


def _image_paths(df: pd.DataFrame, spec: CatalogSpec, data_dir) -> list:
    img = spec.items.image
    if img is None:
        return [None] * len(df)
    if img.field:
        raw = [None if v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip() else str(v).strip()
               for v in df[img.field]]
    else:
        raw = []
        for rec in df.to_dict("records"):
            rec.setdefault(spec.item.key, rec["item_id"])   # the template names the source's key column
            try:
                raw.append(img.template.format(**{k: (int(v) if isinstance(v, str) and v.isdigit() else v)
                                                  for k, v in rec.items()}))
            except (KeyError, ValueError, TypeError):
                raw.append(None)
    return [None if p is None else str(p if str(p).startswith("/") else (data_dir / p)) for p in raw]


def clean_items(items: pd.DataFrame, data_dir, q: Quarantine, spec: CatalogSpec,
                min_confidence: float | None = None) -> pd.DataFrame:
    """Validate items against ``spec``; see the module table for the rules.

    Returns the typed items table (see :class:`CleanCatalog`), the key column named ``item_id``.
    """
    it = spec.items
    df = items.copy()
    if spec.item.key != "item_id":
        df = df.rename(columns={spec.item.key: "item_id"})
    df = _parse_key(df, "item_id", spec.item.dtype, "items", q)
    df = _dedupe_key(df, "item_id", "items", q)
    if it.title:
        no_title = _blank(df[it.title])
        if no_title.any():
            q.add_frame(df[no_title], "items", "missing_title", ROW_REJECTED, "item_id", f"{it.title} is empty")
        df = df[~no_title].copy()
        df[it.title] = df[it.title].astype(str).str.strip()
    image_field = "__image" if it.image is None or it.image.template else it.image.field
    df["image_path"] = _image_paths(df, spec, Path(data_dir))
    low = pd.Series(False, index=df.index)
    if it.trust:
        threshold = it.trust.min if min_confidence is None else min_confidence
        conf = pd.to_numeric(df[it.trust.field], errors="coerce")
        low = conf.notna() & (conf < threshold)
        if low.any():
            names = ", ".join(it.trust.fields)
            q.add_frame(df[low], "items", "low_enrichment_confidence", FIELD_NULLED, "item_id",
                        lambda r: f"{it.trust.field}={r[it.trust.field]} < {threshold}: {names} dropped")
            for col in it.trust.fields:
                target = "image_path" if it.image is not None and col in (image_field, "image_path") else col
                df[target] = df[target].astype(object)
                df.loc[low, target] = None
    df["enrichment_dropped"] = low.to_numpy()
    if it.text:
        for f in it.text.fields:
            if f in df.columns and not any(c.field == f and c.multi for c in it.categorical):
                if df[f].dtype == object or pd.api.types.is_string_dtype(df[f].dtype):
                    df[f] = df[f].where(~_blank(df[f]), None).astype(object)
        for f in it.text.report_missing:
            empty = df[f].isna() & ~low
            if empty.any():
                q.add_frame(df[empty], "items", f"empty_{f}", FIELD_NULLED, "item_id",
                            f"no {f}: text embedding from the other text fields only")
    df = _fields(df, it, "items", "item_id", q)
    if it.available_from:
        raw = df[it.available_from]
        ts = raw if pd.api.types.is_datetime64_any_dtype(raw.dtype) else _parse_timestamps(raw.astype(object).where(raw.notna(), None))
        bad = raw.notna() & ts.isna()
        if bad.any() and not any(n.field == it.available_from for n in it.numeric):
            q.add_frame(df[bad], "items", f"unparsable_{it.available_from}", FIELD_NULLED, "item_id",
                        lambda r: f"{it.available_from}={r[it.available_from]!r}: expected ISO-8601 or unix seconds")
        df["available_from"] = pd.to_datetime(ts, utc=True).astype("datetime64[ns, UTC]")
    else:
        df["available_from"] = pd.Series(pd.NaT, index=df.index, dtype="datetime64[ns, UTC]")
    df["text"] = compose_text(df, it.text.fields) if it.text else ""
    return df.sort_values("item_id").reset_index(drop=True)


def clean_users(users: pd.DataFrame, q: Quarantine, spec: CatalogSpec) -> pd.DataFrame:
    """Validate users against ``spec``; see the module table. The key column is named ``user_id``."""
    df = users.copy()
    if spec.user.key != "user_id":
        df = df.rename(columns={spec.user.key: "user_id"})
    df = _parse_key(df, "user_id", spec.user.dtype, "users", q)
    df = _dedupe_key(df, "user_id", "users", q)
    df = _fields(df, spec.users, "users", "user_id", q)
    return df.sort_values("user_id").reset_index(drop=True)

#: timestamps outside these years are treated as unparsable (they are unit mistakes, e.g. ms)
TS_MIN, TS_MAX = pd.Timestamp("1900-01-01", tz="UTC"), pd.Timestamp("2262-01-01", tz="UTC")


def _parse_timestamps(raw: pd.Series) -> pd.Series:
    """Unix seconds (numbers or numeric strings), ISO-8601 strings or datetimes -> datetime64[ns, UTC].

    Naive datetimes are taken as UTC. Values that do not parse or fall outside 1900..2262 -> NaT.
    """
    if pd.api.types.is_datetime64_any_dtype(raw.dtype):
        out = pd.to_datetime(raw, utc=True, errors="coerce")
    else:
        as_num = pd.to_numeric(raw, errors="coerce")
        ok = as_num.between(TS_MIN.timestamp(), TS_MAX.timestamp())
        out = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
        if ok.any():
            out[ok] = pd.to_datetime(as_num[ok], unit="s", utc=True)
        iso = as_num.isna() & raw.notna()
        if iso.any():
            out[iso] = pd.to_datetime([_parse_datetime(v) for v in raw[iso]], utc=True)
    return out.where((out >= TS_MIN) & (out < TS_MAX))


def _parse_datetime(v) -> pd.Timestamp:
    """A datetime or ISO-8601 string -> UTC Timestamp (naive = UTC); NaT when it does not parse."""
    if isinstance(v, (pd.Timestamp, np.datetime64)) or hasattr(v, "tzinfo"):
        t = pd.Timestamp(v)
    else:
        t = pd.to_datetime(str(v), utc=True, errors="coerce", format="ISO8601")
    if t is pd.NaT or pd.isna(t):
        return pd.NaT
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def parse_timestamp_value(v) -> pd.Timestamp | None:
    """One event time: unix seconds (number or numeric string), ISO-8601 or a datetime -> UTC
    Timestamp; ``None`` when it does not parse or falls outside 1900..2262 (the rules of
    :func:`_parse_timestamps`, for one value)."""
    if v is None or isinstance(v, (bool, np.bool_)):
        return None
    num = None
    try:
        if isinstance(v, (int, float, np.integer, np.floating)):
            num = float(v)
        elif isinstance(v, str) and _NUM_RE.fullmatch(v.strip()):
            num = float(v)
    except (ValueError, OverflowError):   # a 400-digit number is not a time
        return None
    if num is not None:
        if not np.isfinite(num) or not TS_MIN.timestamp() <= num <= TS_MAX.timestamp():
            return None
        t = pd.Timestamp(int(round(num * 1_000_000)), unit="us", tz="UTC")
    else:
        if isinstance(v, str) and not _ISO_RE.match(v.strip()):
            return None   # pandas would read "now" or "today" as the clock: not an event time
        t = _parse_datetime(v)
        if t is pd.NaT:
            return None
    return t if TS_MIN <= t < TS_MAX else None


def _event_times(raw: pd.Series, unit: str) -> pd.Series:
    if unit == "ms":
        num = pd.to_numeric(raw, errors="coerce") / 1000.0
        return _parse_timestamps(num.where(num.notna(), raw.where(num.isna(), None)))
    if unit == "date":
        text = raw.astype("string").str.strip()
        ts = pd.to_datetime(text, format="%Y-%m-%d", utc=True, errors="coerce")
        return ts.where((ts >= TS_MIN) & (ts < TS_MAX)).astype("datetime64[ns, UTC]")
    return _parse_timestamps(raw)


def clean_events(events: pd.DataFrame, item_ids, user_ids, q: Quarantine, spec: CatalogSpec) -> pd.DataFrame:
    """Validate events against the clean ``item_ids`` and ``user_ids`` and ``spec``; see the module table.

    Returns user_id, item_id, action (event type), value float64 (NaN for types without a value),
    event_timestamp datetime64[ns, UTC], source; sorted by time (file order kept among equals).
    """
    ev = spec.events
    df = events.copy().reset_index(drop=True)
    df["__order"] = np.arange(len(df))
    df = df.rename(columns={k: v for k, v in ((spec.user.key, "user_id"), (spec.item.key, "item_id"))
                            if k != v})
    for col, dtype in (("user_id", spec.user.dtype), ("item_id", spec.item.dtype)):
        df = _parse_key(df, col, dtype, "events", q)

    ts_field = ev.timestamp.field
    ts = _event_times(df[ts_field], ev.timestamp.unit)
    bad = ts.isna()
    if bad.any():
        unit = {"s": "unix seconds", "ms": "unix milliseconds", "iso": "ISO-8601", "date": "a date YYYY-MM-DD"}
        q.add_frame(df[bad], "events", "unparsable_timestamp", ROW_REJECTED, "user_id",
                    lambda r: f"{ts_field}={r[ts_field]!r}: expected {unit[ev.timestamp.unit]}")
    df = df[~bad].copy()
    df["__ts"] = ts[~bad].astype("datetime64[ns, UTC]")

    action = df[ev.type_field].astype("string").str.strip() if ev.type_field in df.columns else \
        pd.Series(pd.NA, index=df.index, dtype="string")
    if ev.default_type is not None:
        action = action.fillna(ev.default_type).where(action.fillna("") != "", ev.default_type)
    df["__action"] = action.astype(object)
    bad = ~df["__action"].isin(list(ev.types))
    if bad.any():
        q.add_frame(df[bad], "events", "unknown_event_type", ROW_REJECTED, "user_id",
                    lambda r: f"{ev.type_field}={r.get(ev.type_field)!r}: expected one of {sorted(ev.types)}")
    df = df[~bad].copy()

    value = pd.Series(np.nan, index=df.index, dtype="float64")
    reject = pd.Series("", index=df.index, dtype=object)
    for name, t in ev.types.items():
        rows = df["__action"] == name
        if t.value is None or not rows.any():
            continue
        raw = df.loc[rows, t.value.field]
        empty = raw.isna() | (raw.astype("string").str.strip() == "")
        num = pd.to_numeric(raw, errors="coerce").astype("float64")
        num = num.where(np.isfinite(num))
        value[rows] = num
        if t.value.required:
            reject[rows & empty.reindex(df.index, fill_value=False)] = "missing_value"
        reject[rows & (~empty & num.isna()).reindex(df.index, fill_value=False)] = "unparsable_value"
        if t.value.scale is not None:
            lo, hi = t.value.scale
            out = num.notna() & ~((num >= lo) & (num <= hi))
            reject[rows & out.reindex(df.index, fill_value=False)] = "value_out_of_range"
            if t.value.step:
                k = (num - lo) / t.value.step
                off = num.notna() & ~out & ((k - k.round()).abs() > 1e-6)
                reject[rows & off.reindex(df.index, fill_value=False)] = "value_off_step"
    for rule in ("missing_value", "unparsable_value", "value_out_of_range", "value_off_step"):
        bad = reject == rule
        if bad.any():
            def detail(r, rule=rule):
                t = ev.types[r["__action"]]
                raw = r.get(t.value.field)
                if rule == "value_out_of_range":
                    return f"{r['__action']} {t.value.field}={raw!r} outside the scale [{t.value.scale[0]:g}, {t.value.scale[1]:g}]"
                if rule == "value_off_step":
                    return f"{r['__action']} {t.value.field}={raw!r} not on the scale's step {t.value.step:g}"
                if rule == "missing_value":
                    return f"{r['__action']} needs a value in {t.value.field}"
                return f"{r['__action']} {t.value.field}={raw!r} is not a finite number"
            q.add_frame(df[bad], "events", rule, ROW_REJECTED, "user_id", detail)
    keep = reject == ""
    df, value = df[keep].copy(), value[keep]

    for col, known, rule in (("user_id", user_ids, "unknown_user"), ("item_id", item_ids, "unknown_item")):
        bad = ~df[col].isin(pd.Index(known))
        if bad.any():
            q.add_frame(df[bad], "events", rule, ROW_REJECTED, col,
                        lambda r, c=col: f"{c}={r[c]!r} is not in the clean {c.split('_')[0]}s table")
        df, value = df[~bad], value[~bad]

    out = pd.DataFrame({"user_id": df["user_id"].to_numpy(), "item_id": df["item_id"].to_numpy(),
                        "action": df["__action"].astype(str).to_numpy(), "value": value.to_numpy("float64"),
                        "event_timestamp": df["__ts"].to_numpy(), "source": df["source"].astype(str).to_numpy(),
                        "__order": df["__order"].to_numpy()})
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
    if ev.duplicates != "none":
        dup = out.duplicated(list(ev.duplicates), keep="first")
        if dup.any():
            q.add_frame(out[dup], "events", "duplicate_event", ROW_REJECTED, "user_id",
                        f"repeat of an earlier event on ({', '.join(ev.duplicates)})")
        out = out[~dup]
    out = out.sort_values(["event_timestamp", "__order"], kind="stable").drop(columns="__order")
    return out.reset_index(drop=True)


def clean(catalog: Catalog, min_enrichment_confidence: float | None = None,
          spec: CatalogSpec | None = None) -> CleanCatalog:
    """Apply every rule of the catalog's spec; quarantine records are added to ``catalog.quarantine``.

    Args:
        spec: default ``catalog.spec`` (set by :func:`recfeast.adapters.read_catalog`).
        min_enrichment_confidence: override ``items.trust.min``.

    Raises:
        ConfigError: no spec is given or attached to the catalog.
    """
    from recfeast.errors import ConfigError

    spec = spec or catalog.spec
    if spec is None:
        raise ConfigError("clean() needs a catalog spec (read the catalog with read_catalog(data_dir, spec))")
    q = catalog.quarantine
    items = clean_items(catalog.items, catalog.data_dir, q, spec, min_enrichment_confidence)
    users = clean_users(catalog.users, q, spec)
    events = clean_events(catalog.events, items["item_id"], users["user_id"], q, spec)
    return CleanCatalog(items=items, users=users, events=events, quarantine=q, spec=spec)
