"""Feature tables: one DataFrame per feature view of the catalog spec, keyed by entity and ``event_timestamp``.

The columns are exactly those of :func:`recfeast.views.feature_views`; which event types, windows,
categorical and numeric fields exist comes from the spec. Every builder is a pure function of the
clean tables (and embeddings), so a rerun on the same input gives the same rows.
``created_timestamp`` is added at write time (:func:`recfeast.io.write_feature_table`).

Timestamps follow one rule: a row's ``event_timestamp`` is the first moment its values were known.
Daily snapshots are stamped at the end of the day (next midnight UTC), so a point-in-time join at
any moment of a day sees only the previous days.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recfeast.entities import flag_matrix, item_available_from, item_text, user_available_from, values_of  # noqa: F401
from recfeast.preprocess import apply_normalizer, fit_normalizer, select_columns
from recfeast.spec import CatalogSpec, NumericSpec

DAY = pd.Timedelta(days=1)
EPOCH = pd.Timestamp(0, tz="UTC")


def end_of_day(ts: pd.Series) -> pd.Series:
    """Next midnight UTC after each timestamp (the snapshot time of that day)."""
    return ts.dt.floor("D") + DAY


def select_vocabularies(items: pd.DataFrame, spec: CatalogSpec) -> dict:
    """Per item categorical field: the kept values and the dropped ones with the reason.

    Values are ranked by the number of items that have them (ties: first appearance), the top
    ``max_values`` are candidates, and near-constant flags (:func:`recfeast.preprocess.select_columns`,
    threshold ``features.max_dominant_share``) are dropped.

    Returns:
        ``{feature: {"field", "candidates", "kept", "dropped": {value: reason}, "rule"}}``.
    """
    out = {}
    for c in spec.items.categorical:
        counts: dict = {}
        for vs in items[c.field]:
            for v in values_of(vs):
                counts[v] = counts.get(v, 0) + 1
        ranked = sorted(counts, key=lambda v: -counts[v])[: c.max_values]
        flags = pd.DataFrame(flag_matrix(items[c.field], ranked), columns=ranked)
        kept, dropped = select_columns(flags, spec.features.max_dominant_share)
        over = {v: f"beyond the {c.max_values} most frequent values" for v in sorted(counts, key=lambda v: -counts[v])[c.max_values:]}
        out[c.name] = {"field": c.field, "candidates": ranked, "kept": kept, "dropped": {**dropped, **over},
                       "rule": f"top {c.max_values} by items; dominant value share > {spec.features.max_dominant_share}"}
    return out


def _numeric_column(df: pd.DataFrame, n: NumericSpec) -> pd.Series:
    col = n.name if n.transform == "year" and n.name in df.columns else n.field
    x = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return np.log1p(x.clip(lower=0)) if n.transform == "log1p" else x


def _normalised(df: pd.DataFrame, n: NumericSpec, table: str, stats: dict) -> np.ndarray:
    x = _numeric_column(df, n)
    if n.normalize == "none":
        return x.fillna(x.median() if x.notna().any() else 0.0).astype(np.float32).to_numpy()
    key = f"{table}.{n.name}"
    stats[key] = fit_normalizer(x, n.normalize, n.name)
    return apply_normalizer(x, stats[key])


def _type_frames(events: pd.DataFrame, spec: CatalogSpec) -> dict[str, pd.DataFrame]:
    return {t: events[events["action"] == t] for t in spec.events.types}


def build_item_content(items: pd.DataFrame, events: pd.DataFrame, spec: CatalogSpec,
                       vocabs: dict) -> tuple[pd.DataFrame, dict]:
    """Item content features, a row at the item's entry and at the end of each day it had events.

    Columns (see :mod:`recfeast.views`): item_id, event_timestamp, each numeric field float32
    (normalised), ``<feature>_flags`` ``(len(kept),)`` float32 per categorical field,
    ``<prefix>_count`` int64 and ``avg_<value>`` float32 (NaN before the first) per event type,
    popularity float32 (min-max of log1p of the weight-summed event count).

    Returns:
        ``(table, normalisation stats)``; stats keys ``item_content.<feature>``.
    """
    stats: dict = {}
    static = pd.DataFrame({"item_id": items["item_id"].to_numpy()})
    for n in spec.items.numeric:
        static[n.name] = _normalised(items, n, "item_content", stats)
    for c in spec.items.categorical:
        static[f"{c.name}_flags"] = list(flag_matrix(items[c.field], vocabs[c.name]["kept"]))

    ev = events[["item_id", "action", "value", "event_timestamp"]].copy()
    ev["snap"] = end_of_day(ev["event_timestamp"])
    first = pd.DataFrame({"item_id": items["item_id"].to_numpy(), "snap": item_available_from(items, events).to_numpy()})
    snaps = pd.concat([first, ev[["item_id", "snap"]]], ignore_index=True).drop_duplicates().sort_values(["item_id", "snap"])
    rows = snaps.reset_index(drop=True)
    weighted = np.zeros(len(rows))
    for t, et in spec.events.types.items():
        p, v = spec.feature_prefix(t), spec.value_name(t)
        tev = ev[ev["action"] == t]
        daily = tev.groupby(["item_id", "snap"]).agg(n=("value", "size"), s=("value", "sum")).reset_index()
        merged = rows.merge(daily, on=["item_id", "snap"], how="left").fillna({"n": 0, "s": 0.0})
        n_cum = merged.groupby("item_id")["n"].cumsum().to_numpy()
        rows[f"{p}_count"] = n_cum.astype(np.int64)
        if v:
            s_cum = merged.groupby("item_id")["s"].cumsum().to_numpy()
            rows[f"avg_{v}"] = np.where(n_cum > 0, s_cum / np.maximum(n_cum, 1), np.nan).astype(np.float32)
        weighted += et.weight * n_cum
    log_count = pd.Series(np.log1p(weighted))
    stats["item_content.popularity"] = fit_normalizer(log_count, "minmax", "popularity")
    rows["popularity"] = apply_normalizer(log_count, stats["item_content.popularity"])
    table = rows.rename(columns={"snap": "event_timestamp"}).merge(static, on="item_id", how="left")
    from recfeast.views import view

    cols = ["item_id", "event_timestamp"] + [f.name for f in view(spec, "item_content").fields]
    return table[cols].reset_index(drop=True), stats


def build_user_profile(users: pd.DataFrame, events: pd.DataFrame, spec: CatalogSpec) -> tuple[pd.DataFrame, dict]:
    """One row per user at the moment the user was first seen: categorical labels ("unknown" when
    missing), numeric fields float32 (normalised, median-imputed) and ``<feature>_bucket`` labels."""
    stats: dict = {}
    table = pd.DataFrame({"user_id": users["user_id"].to_numpy(),
                          "event_timestamp": user_available_from(users, events).to_numpy()})
    for c in spec.users.categorical:
        table[c.name] = users[c.field].fillna("unknown").astype(str).to_numpy()
    for n in spec.users.numeric:
        table[n.name] = _normalised(users, n, "user_profile", stats)
        if n.buckets:
            x = _numeric_column(users, n)
            label = pd.Series(["unknown"] * len(x), index=x.index, dtype=object)
            for lo, hi, name in n.buckets:
                label[(x >= lo) & (x < hi)] = name
            table[f"{n.name}_bucket"] = label.to_numpy()
    from recfeast.views import view

    v = view(spec, "user_profile")
    return table[["user_id", "event_timestamp"] + [f.name for f in v.fields]], stats


def build_user_behavior(events: pd.DataFrame, items: pd.DataFrame, spec: CatalogSpec, vocabs: dict) -> pd.DataFrame:
    """Behaviour aggregates, a new row at the end of every day on which any value changes.

    Windows are whole days: ``<prefix>_count_7d`` at the end of day D counts that type's events on
    days D-6..D. Values change on days with events and on the days an event leaves a window (d + w),
    so rows are written on exactly those days and a point-in-time join is right at any moment. Days
    since the last event change with the clock alone: they are computed at request time from
    ``last_<prefix>_ts`` (the ``user_recency`` on-demand view).

    Columns: user_id, event_timestamp, then per event type ``<prefix>_count_<w>d`` int64,
    ``avg_<value>_<w>d`` float32 (NaN when the window is empty), ``<prefix>_count_total`` int64,
    ``avg_<value>_total`` float32, ``last_<prefix>_ts`` int64 (unix seconds, 0 before the first), and
    per item categorical ``<feature>_share`` ``(len(kept),)`` float32 (share of the user's events, of
    every type, whose item has each value).
    """
    from recfeast.views import view

    cols = ["user_id", "event_timestamp"] + [f.name for f in view(spec, "user_behavior").fields]
    if not len(events):
        return pd.DataFrame(columns=cols)
    windows = spec.features.windows_days
    types = list(spec.events.types)
    item_row = pd.Series(np.arange(len(items)), index=items["item_id"].to_numpy())
    ev = events[["user_id", "item_id", "action", "value", "event_timestamp"]].copy()
    ev["day"] = ((ev["event_timestamp"].dt.floor("D") - EPOCH) // DAY).astype(np.int64)
    ev["unix"] = ((ev["event_timestamp"] - EPOCH) // pd.Timedelta(seconds=1)).astype(np.int64)
    ev["value"] = ev["value"].fillna(0.0)
    # 1. per (user, day): count, value sum and latest time per type; categorical flag sums (all types)
    parts = []
    for t in types:
        p = spec.feature_prefix(t)
        g = ev[ev["action"] == t].groupby(["user_id", "day"]).agg(
            **{f"n_{p}": ("value", "size"), f"s_{p}": ("value", "sum"), f"l_{p}": ("unix", "max")})
        parts.append(g)
    rows = item_row.reindex(ev["item_id"].to_numpy()).to_numpy()
    ok = ~np.isnan(rows)
    cat_cols = {}
    for c in spec.items.categorical:
        mat = flag_matrix(items[c.field], vocabs[c.name]["kept"])
        flags = np.zeros((len(ev), mat.shape[1]), np.float64)
        flags[ok] = mat[rows[ok].astype(np.int64)]
        names = [f"c_{c.name}_{k}" for k in range(mat.shape[1])]
        cat_cols[c.name] = names
        parts.append(pd.DataFrame(flags, columns=names, index=pd.MultiIndex.from_arrays(
            [ev["user_id"].to_numpy(), ev["day"].to_numpy()], names=["user_id", "day"])).groupby(level=[0, 1]).sum())
    daily = pd.concat(parts, axis=1).fillna(0.0).sort_index().reset_index()
    # 2. cumulative per user (running totals up to and including each active day; latest time: running max)
    val_cols = [c for c in daily.columns if c.startswith(("n_", "s_", "c_"))]
    last_cols = [c for c in daily.columns if c.startswith("l_")]
    grouped = daily.groupby("user_id")
    cum = pd.concat([daily[["user_id", "day"]], grouped[val_cols].cumsum(), grouped[last_cols].cummax()], axis=1)
    cum = cum.sort_values("day", kind="stable")
    # 3. snapshot days: active days and the days an event leaves a window; values as of each one
    snaps = pd.concat([daily[["user_id", "day"]].assign(day=daily["day"] + w) for w in [0, *windows]])
    snaps = snaps.drop_duplicates().sort_values("day", kind="stable").reset_index(drop=True)
    at = pd.merge_asof(snaps, cum, on="day", by="user_id", direction="backward")
    rec = {"user_id": at["user_id"].to_numpy(), "snap_day": at["day"].to_numpy()}
    total = np.zeros(len(at))
    for t in types:
        total += at[f"n_{spec.feature_prefix(t)}"].to_numpy()
    for w in windows:
        prev = pd.merge_asof(snaps.assign(day=snaps["day"] - w), cum, on="day", by="user_id", direction="backward")
        for t in types:
            p, v = spec.feature_prefix(t), spec.value_name(t)
            n_w = at[f"n_{p}"].to_numpy() - prev[f"n_{p}"].fillna(0.0).to_numpy()
            rec[f"{p}_count_{w}d"] = np.rint(n_w).astype(np.int64)
            if v:
                s_w = at[f"s_{p}"].to_numpy() - prev[f"s_{p}"].fillna(0.0).to_numpy()
                rec[f"avg_{v}_{w}d"] = np.where(n_w > 0.5, s_w / np.maximum(n_w, 1), np.nan).astype(np.float32)
    for t in types:
        p, v = spec.feature_prefix(t), spec.value_name(t)
        n = at[f"n_{p}"].to_numpy()
        rec[f"{p}_count_total"] = np.rint(n).astype(np.int64)
        if v:
            rec[f"avg_{v}_total"] = np.where(n > 0.5, at[f"s_{p}"].to_numpy() / np.maximum(n, 1), np.nan).astype(np.float32)
        rec[f"last_{p}_ts"] = at[f"l_{p}"].fillna(0).to_numpy().astype(np.int64)
    for name, names in cat_cols.items():
        rec[f"{name}_share"] = list((at[names].to_numpy() / np.maximum(total, 1)[:, None]).astype(np.float32))
    table = pd.DataFrame(rec).sort_values(["user_id", "snap_day"], kind="stable").reset_index(drop=True)
    table["event_timestamp"] = EPOCH + (table.pop("snap_day") + 1) * DAY
    return table[cols]


def user_histories(events: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """The last ``max_len`` items of each user's events up to the end of each day the user was active.

    Returns columns user_id, event_timestamp (end of the day), item_ids (list, oldest first; ties
    in time keep the events' order).
    """
    ev = events.assign(snap=end_of_day(events["event_timestamp"]))
    ev = ev.sort_values(["user_id", "event_timestamp"], kind="stable")
    out = []
    for user_id, uev in ev.groupby("user_id", sort=True):
        items = uev["item_id"].to_numpy()
        ends = uev.groupby("snap").size().cumsum()
        for snap, end in ends.items():
            out.append((user_id, snap, items[max(0, end - max_len):end].tolist()))
    return pd.DataFrame(out, columns=["user_id", "event_timestamp", "item_ids"])
