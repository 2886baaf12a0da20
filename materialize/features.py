"""Feature tables: one DataFrame per feature view, keyed by entity and ``event_timestamp``.

Every builder is a pure function of the clean tables (and embeddings), so a rerun on the same input
gives the same rows. ``created_timestamp`` is added at write time (:func:`..io.write_feature_table`).

Timestamps follow one rule: a row's ``event_timestamp`` is the first moment its values were known.
Daily snapshots are stamped at the end of the day (next midnight UTC), so a point-in-time join at
any moment of a day sees only the previous days.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from recfeast.entities import genre_matrix, item_available_from, item_text, user_available_from  # noqa: F401
from recfeast.preprocess import apply_normalizer, fit_normalizer

DAY = pd.Timedelta(days=1)
WINDOWS_DAYS = (7, 30, 90)
#: MovieLens-1M's age groups (its README), used as the profile's age bucket
AGE_BUCKETS = ((0, 18, "<18"), (18, 25, "18-24"), (25, 35, "25-34"), (35, 45, "35-44"),
               (45, 50, "45-49"), (50, 56, "50-55"), (56, 200, "56+"))


def end_of_day(ts: pd.Series) -> pd.Series:
    """Next midnight UTC after each timestamp (the snapshot time of that day)."""
    return ts.dt.floor("D") + DAY


def build_item_content(items: pd.DataFrame, events: pd.DataFrame, genres: list[str]) -> tuple[pd.DataFrame, dict]:
    """Item content features, a new row at the item's entry and at the end of each day it was rated.

    Columns: item_id int64, event_timestamp, release_year float32 (z-score), runtime float32 (z-score),
    rating_count int64 (ratings so far), avg_rating float32 (mean rating so far, NaN before the
    first), popularity float32 (min-max of log1p(rating_count)), genre_flags ``(len(genres),)`` float32.

    Returns:
        ``(table, normalisation stats)``; stats keys ``item_content.<column>``.
    """
    year = items["release_date"].dt.year.astype("float64")
    stats = {
        "item_content.release_year": fit_normalizer(year, "zscore", "release_year"),
        "item_content.runtime": fit_normalizer(items["runtime_min"], "zscore", "runtime"),
    }
    static = pd.DataFrame({
        "item_id": items["item_id"].to_numpy(),
        "release_year": apply_normalizer(year, stats["item_content.release_year"]),
        "runtime": apply_normalizer(items["runtime_min"], stats["item_content.runtime"]),
    })
    static["genre_flags"] = list(genre_matrix(items, genres))

    ev = events[["item_id", "event_timestamp", "value"]].copy()
    ev["snap"] = end_of_day(ev["event_timestamp"])
    daily = ev.groupby(["item_id", "snap"]).agg(n=("value", "size"), s=("value", "sum")).reset_index()
    daily = daily.sort_values(["item_id", "snap"])
    daily["rating_count"] = daily.groupby("item_id")["n"].cumsum()
    daily["rating_sum"] = daily.groupby("item_id")["s"].cumsum()
    first = pd.DataFrame({"item_id": items["item_id"].to_numpy(), "snap": item_available_from(items, events).to_numpy(),
                          "rating_count": 0, "rating_sum": 0.0})
    rows = pd.concat([first, daily[["item_id", "snap", "rating_count", "rating_sum"]]], ignore_index=True)
    rows = rows.drop_duplicates(["item_id", "snap"], keep="last").sort_values(["item_id", "snap"])
    rows["avg_rating"] = (rows["rating_sum"] / rows["rating_count"].where(rows["rating_count"] > 0)).astype("float32")
    log_count = np.log1p(rows["rating_count"].astype("float64"))
    stats["item_content.popularity"] = fit_normalizer(log_count, "minmax", "popularity")
    rows["popularity"] = apply_normalizer(log_count, stats["item_content.popularity"])
    table = rows.rename(columns={"snap": "event_timestamp"}).merge(static, on="item_id", how="left")
    table["rating_count"] = table["rating_count"].astype("int64")
    cols = ["item_id", "event_timestamp", "release_year", "runtime", "rating_count", "avg_rating",
            "popularity", "genre_flags"]
    return table[cols].reset_index(drop=True), stats


def age_bucket(age: pd.Series) -> pd.Series:
    """Age in years -> MovieLens-1M age group label; ``None`` when unknown."""
    out = pd.Series([None] * len(age), index=age.index, dtype=object)
    for lo, hi, label in AGE_BUCKETS:
        out[(age >= lo) & (age < hi)] = label
    return out


def build_user_profile(users: pd.DataFrame, events: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """One row per user at the moment the user was first seen.

    Columns: user_id int64, event_timestamp, age float32 (z-score, median-imputed), age_bucket str,
    gender str, occupation str ("unknown" when missing).
    """
    stats = {"user_profile.age": fit_normalizer(users["age"], "zscore", "age")}
    table = pd.DataFrame({
        "user_id": users["user_id"].to_numpy(),
        "event_timestamp": user_available_from(users, events).to_numpy(),
        "age": apply_normalizer(users["age"], stats["user_profile.age"]),
        "age_bucket": age_bucket(users["age"]).fillna("unknown").to_numpy(),
        "gender": users["gender"].fillna("unknown").to_numpy(),
        "occupation": users["occupation"].fillna("unknown").to_numpy(),
    })
    return table, stats


def build_user_behavior(events: pd.DataFrame, items: pd.DataFrame, genres: list[str]) -> pd.DataFrame:
    """Behaviour aggregates, a new row at the end of every day on which any value changes.

    Windows are whole days: ``rating_count_7d`` at the end of day D counts ratings on days D-6..D.
    Values change on days with ratings and on the days a rating leaves a window (d + 7, d + 30,
    d + 90), so rows are written on exactly those days and a point-in-time join is right at any
    moment. Days since the last rating change with the clock alone: they are computed at request
    time from ``last_rating_ts`` (the ``user_recency`` on-demand view).

    Columns: user_id int64, event_timestamp, rating_count_{7,30,90}d int64, avg_rating_{7,30,90}d
    float32 (NaN when the window is empty), rating_count_total int64, avg_rating_total float32,
    last_rating_ts int64 (unix seconds), genre_share ``(len(genres),)`` float32 (fraction of the
    user's rated items with each genre, all ratings so far).
    """
    g = genre_matrix(items, genres)
    item_row = pd.Series(np.arange(len(items)), index=items["item_id"].to_numpy())
    ev = events[["user_id", "item_id", "value", "event_timestamp"]].copy()
    ev["day"] = (ev["event_timestamp"].dt.floor("D") - pd.Timestamp(0, tz="UTC")) // DAY
    ev["unix"] = (ev["event_timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    rows = []
    for user_id, uev in ev.groupby("user_id", sort=True):
        days = uev.groupby("day").agg(n=("value", "size"), s=("value", "sum"), last=("unix", "max"))
        gsum = pd.DataFrame(g[item_row[uev["item_id"]].to_numpy()], index=uev.index).groupby(uev["day"]).sum()
        active = days.index.to_numpy()
        snap_days = np.unique(np.concatenate([active] + [active + w for w in WINDOWS_DAYS]))
        cum_n = np.cumsum(days["n"].to_numpy())
        cum_s = np.cumsum(days["s"].to_numpy())
        cum_g = np.cumsum(gsum.loc[active].to_numpy(), axis=0)
        upto = np.searchsorted(active, snap_days, side="right") - 1  # last active day <= snapshot day
        rec = {"user_id": np.full(len(snap_days), user_id, dtype=np.int64), "snap_day": snap_days}
        for w in WINDOWS_DAYS:
            before = np.searchsorted(active, snap_days - w, side="right") - 1  # last active day <= D - w
            n_w = cum_n[upto] - np.where(before >= 0, cum_n[np.maximum(before, 0)], 0)
            s_w = cum_s[upto] - np.where(before >= 0, cum_s[np.maximum(before, 0)], 0)
            rec[f"rating_count_{w}d"] = n_w.astype(np.int64)
            rec[f"avg_rating_{w}d"] = np.where(n_w > 0, s_w / np.maximum(n_w, 1), np.nan).astype(np.float32)
        rec["rating_count_total"] = cum_n[upto].astype(np.int64)
        rec["avg_rating_total"] = (cum_s[upto] / cum_n[upto]).astype(np.float32)
        rec["last_rating_ts"] = days["last"].to_numpy()[upto].astype(np.int64)
        shares = (cum_g[upto] / cum_n[upto][:, None]).astype(np.float32)
        rec["genre_share"] = list(shares)
        rows.append(pd.DataFrame(rec))
    cols = (["user_id", "event_timestamp"] + [f"rating_count_{w}d" for w in WINDOWS_DAYS]
            + [f"avg_rating_{w}d" for w in WINDOWS_DAYS]
            + ["rating_count_total", "avg_rating_total", "last_rating_ts", "genre_share"])
    if not rows:
        return pd.DataFrame(columns=cols)
    table = pd.concat(rows, ignore_index=True)
    table["event_timestamp"] = pd.Timestamp(0, tz="UTC") + (table.pop("snap_day") + 1) * DAY
    return table[cols]


def user_histories(events: pd.DataFrame, max_len: int) -> pd.DataFrame:
    """The last ``max_len`` items each user rated up to the end of each day the user was active.

    Returns columns user_id int64, event_timestamp (end of the day), item_ids (list of int64,
    oldest first; ties in time ordered by item_id).
    """
    ev = events.sort_values(["user_id", "event_timestamp", "item_id"], kind="stable")
    ev = ev.assign(snap=end_of_day(ev["event_timestamp"]))
    out = []
    for user_id, uev in ev.groupby("user_id", sort=True):
        items = uev["item_id"].to_numpy()
        ends = uev.groupby("snap").size().cumsum()
        for snap, end in ends.items():
            out.append((user_id, snap, items[max(0, end - max_len):end].tolist()))
    return pd.DataFrame(out, columns=["user_id", "event_timestamp", "item_ids"])
