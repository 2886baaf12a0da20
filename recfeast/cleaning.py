"""Cleaning: parse the canonical tables, apply the validation rules, quarantine what fails.

Rules (``rule`` in the quarantine table; ``row_rejected`` drops the row, ``field_nulled`` keeps the row
without the named fields):

========================== ========= ============= ===============================================
rule                       table     action        when
========================== ========= ============= ===============================================
unparsable_id              any       row_rejected  an id is not an integer in the int64 range
duplicate_item_id          items     row_rejected  second and later rows of one item_id
duplicate_user_id          users     row_rejected  second and later rows of one user_id
missing_title              items     row_rejected  empty title
low_enrichment_confidence  items     field_nulled  ``enrichment_confidence`` < threshold (default 0.5):
                                                   description, tagline, image and runtime are a
                                                   third-party match that may be another item's
                                                   (MovieLens 72 carries Pulp Fiction's text)
empty_description          items     field_nulled  no description: text embedding from title + genres
runtime_out_of_range       items     field_nulled  runtime not in (0, 1000] minutes
unparsable_release_date    items     field_nulled  release date is not a date
age_out_of_range           users     field_nulled  age not a number in [1, 120]
unparsable_timestamp       events    row_rejected  not unix seconds, ISO-8601 or a datetime, or
                                                   outside 1900..2262
unparsable_value           events    row_rejected  value is not a number
value_out_of_range         events    row_rejected  rating outside the catalog's scale (1..5)
unknown_user               events    row_rejected  user_id not in the (clean) users table
unknown_item               events    row_rejected  item_id not in the (clean) items table
duplicate_event            events    row_rejected  exact repeat of an earlier event
========================== ========= ============= ===============================================
"""

from __future__ import annotations

import re

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfeast.schema import FIELD_NULLED, ROW_REJECTED, Catalog, Quarantine

ENRICHMENT_FIELDS = ("description", "tagline", "image_path", "runtime_min")


@dataclass
class CleanCatalog:
    """Typed, validated tables.

    ``items``: item_id int64 (unique), title str, description/tagline str|None, genres list[str],
    image_path str|None (absolute), release_date datetime64[ns, UTC] (NaT when unknown), runtime_min
    float64 (NaN when unknown), enrichment_dropped bool (rule low_enrichment_confidence applied).
    ``users``: user_id int64, age float64 (NaN unknown), gender, occupation.
    ``events``: user_id int64, item_id int64, action str, value float64, event_timestamp
    datetime64[ns, UTC], sorted by (event_timestamp, user_id, item_id).
    """

    items: pd.DataFrame
    users: pd.DataFrame
    events: pd.DataFrame
    quarantine: Quarantine


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
    return pd.array([parse_int64_value(v) for v in values], dtype="Int64")


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


def clean_items(items: pd.DataFrame, data_dir, q: Quarantine, min_confidence: float = 0.5) -> pd.DataFrame:
    """Validate items; see the module table for the rules. Returns the typed items table."""
    df = _parse_ids(items.copy(), ["item_id"], "items", q)
    df = _dedupe_key(df, "item_id", "items", q)
    no_title = _blank(df["title"])
    if no_title.any():
        q.add_frame(df[no_title], "items", "missing_title", ROW_REJECTED, "item_id", "title is empty")
    df = df[~no_title].copy()

    conf = pd.to_numeric(df["enrichment_confidence"], errors="coerce")
    low = conf.notna() & (conf < min_confidence)
    if low.any():
        q.add_frame(df[low], "items", "low_enrichment_confidence", FIELD_NULLED, "item_id",
                    lambda r: f"enrichment_confidence={r['enrichment_confidence']} < {min_confidence}: "
                              f"{', '.join(ENRICHMENT_FIELDS)} dropped")
        for col in ENRICHMENT_FIELDS:
            df.loc[low, col] = None
    df["enrichment_dropped"] = low.to_numpy()
    for col in ("description", "tagline", "image_path"):
        df[col] = df[col].where(~_blank(df[col]), None).astype(object)
    empty = df["description"].isna() & ~low
    if empty.any():
        q.add_frame(df[empty], "items", "empty_description", FIELD_NULLED, "item_id",
                    "no description: text embedding from title and genres only")

    runtime = pd.to_numeric(df["runtime_min"], errors="coerce")
    bad_rt = runtime.notna() & ~((runtime > 0) & (runtime <= 1000))
    if bad_rt.any():
        q.add_frame(df[bad_rt], "items", "runtime_out_of_range", FIELD_NULLED, "item_id",
                    lambda r: f"runtime_min={r['runtime_min']} not in (0, 1000]")
    df["runtime_min"] = runtime.where(~bad_rt).astype("float64")
    release = _parse_timestamps(df["release_date"].astype(object).where(df["release_date"].notna(), None))
    bad_rd = df["release_date"].notna() & release.isna()
    if bad_rd.any():
        q.add_frame(df[bad_rd], "items", "unparsable_release_date", FIELD_NULLED, "item_id",
                    lambda r: f"release_date={r['release_date']!r}: expected ISO-8601 or unix seconds")
    df["release_date"] = release
    df["image_path"] = [
        None if p is None else str(p if str(p).startswith("/") else (data_dir / p)) for p in df["image_path"]
    ]
    df["genres"] = [list(g) if g is not None else [] for g in df["genres"]]
    df["title"] = df["title"].astype(str).str.strip()
    return df.sort_values("item_id").reset_index(drop=True)


def clean_users(users: pd.DataFrame, q: Quarantine) -> pd.DataFrame:
    """Validate users; see the module table for the rules. Returns the typed users table."""
    df = _parse_ids(users.copy(), ["user_id"], "users", q)
    df = _dedupe_key(df, "user_id", "users", q)
    age = pd.to_numeric(df["age"], errors="coerce")
    bad = df["age"].notna() & ~((age >= 1) & (age <= 120))
    if bad.any():
        q.add_frame(df[bad], "users", "age_out_of_range", FIELD_NULLED, "user_id",
                    lambda r: f"age={r['age']!r} is not a number in [1, 120]")
    df["age"] = age.where(~bad).astype("float64")
    for col in ("gender", "occupation"):
        df[col] = df[col].where(~_blank(df[col]), None).astype(object)
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


def clean_events(events: pd.DataFrame, item_ids, user_ids, q: Quarantine,
                 rating_scale: tuple[float, float] = (1.0, 5.0)) -> pd.DataFrame:
    """Validate events against the clean ``item_ids`` and ``user_ids``; see the module table."""
    df = _parse_ids(events.copy(), ["user_id", "item_id"], "events", q)

    ts = _parse_timestamps(df["event_timestamp"])
    bad = ts.isna()
    if bad.any():
        q.add_frame(df[bad], "events", "unparsable_timestamp", ROW_REJECTED, "user_id",
                    lambda r: f"event_timestamp={r['event_timestamp']!r}: expected unix seconds or ISO-8601")
    df, ts = df[~bad].copy(), ts[~bad]
    df["event_timestamp"] = ts.astype("datetime64[ns, UTC]")

    value = pd.to_numeric(df["value"], errors="coerce")
    bad = value.isna()
    if bad.any():
        q.add_frame(df[bad], "events", "unparsable_value", ROW_REJECTED, "user_id",
                    lambda r: f"value={r['value']!r} is not a number")
    df, value = df[~bad].copy(), value[~bad]
    lo, hi = rating_scale
    is_rating = df["action"].fillna("rate") == "rate"
    bad = is_rating & ~((value >= lo) & (value <= hi))
    if bad.any():
        q.add_frame(df[bad], "events", "value_out_of_range", ROW_REJECTED, "user_id",
                    lambda r: f"rating {r['value']} outside the scale [{lo:g}, {hi:g}]")
    df, value = df[~bad].copy(), value[~bad]
    df["value"] = value.astype("float64")

    for col, known, rule in (("user_id", user_ids, "unknown_user"), ("item_id", item_ids, "unknown_item")):
        bad = ~df[col].isin(pd.Index(known))
        if bad.any():
            q.add_frame(df[bad], "events", rule, ROW_REJECTED, col,
                        lambda r, c=col: f"{c}={r[c]} is not in the clean {c.split('_')[0]}s table")
        df = df[~bad]

    df["action"] = df["action"].fillna("rate").astype(str)
    key = ["user_id", "item_id", "action", "value", "event_timestamp"]
    dup = df.duplicated(key, keep="first")
    if dup.any():
        q.add_frame(df[dup], "events", "duplicate_event", ROW_REJECTED, "user_id",
                    "exact repeat of an earlier event (user, item, action, value, timestamp)")
    df = df[~dup]
    return df.sort_values(["event_timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True)


def clean(catalog: Catalog, min_enrichment_confidence: float = 0.5) -> CleanCatalog:
    """Apply every rule to ``catalog``; quarantine records are added to ``catalog.quarantine``."""
    q = catalog.quarantine
    items = clean_items(catalog.items, catalog.data_dir, q, min_enrichment_confidence)
    users = clean_users(catalog.users, q)
    events = clean_events(catalog.events, items["item_id"], users["user_id"], q, catalog.rating_scale)
    return CleanCatalog(items=items, users=users, events=events, quarantine=q)
