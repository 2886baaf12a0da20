"""Feature-table builders on hand-made events whose right answer is known, and on real data."""

import numpy as np
import pandas as pd
import pytest

from recfeast.materialize import features as F
from recfeast.spec import load_spec, parse_spec

#: a minimal spec over the hand-made tables: one rating type, genres, runtime and release year
SPEC = parse_spec({
    "name": "handmade",
    "items": {"source": {"path": "items.parquet"}, "title": "title", "text": {"fields": ["title", "genres"]},
              "categorical": [{"field": "genres", "multi": True, "feature": "genre"}],
              "numeric": [{"field": "release_date", "feature": "release_year", "transform": "year"},
                          {"field": "runtime_min", "feature": "runtime"}]},
    "events": {"source": {"path": "events.csv"},
               "types": {"rate": {"kind": "rating", "feature": "rating", "value": {"scale": [1, 5], "step": 1},
                                  "positive": {"min_value": 4}}}},
})
VOCAB = {"genre": {"kept": ["Comedy", "Drama"]}}


def _items():
    return pd.DataFrame({
        "item_id": [10, 20, 30], "title": ["A", "B", "C"], "genres": [["Drama"], ["Comedy", "Drama"], ["Comedy"]],
        "description": [None] * 3, "tagline": [None] * 3,
        "release_date": pd.to_datetime(["1990-01-01", None, "2000-06-01"], utc=True),
        "runtime_min": [90.0, np.nan, 120.0],
    }).assign(release_year=lambda d: d.release_date.dt.year.astype("float64"),
              available_from=lambda d: d.release_date)


def _events(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "value", "event_timestamp"]).assign(
        event_timestamp=lambda d: pd.to_datetime(d.event_timestamp, utc=True), action="rate")


EVENTS = _events([
    (1, 10, 4.0, "1998-01-01 10:00"), (1, 20, 2.0, "1998-01-01 12:00"),
    (1, 30, 5.0, "1998-01-05 09:00"), (2, 10, 3.0, "1998-01-02 08:00"),
])


def test_user_behavior_rows_exactly_when_values_change():
    t = F.build_user_behavior(EVENTS, _items(), SPEC, VOCAB)
    u1 = t[t.user_id == 1].set_index("event_timestamp")
    days = [d.strftime("%m-%d") for d in u1.index]
    # active on 01-01 and 01-05 -> snapshots at next midnight; windows expire 7/30/90 days later
    # (1998-01-01 + 30 days = 01-31, stamped at its end = 02-01; + 90 days = 04-01 -> 04-02)
    assert days == ["01-02", "01-06", "01-09", "01-13", "02-01", "02-05", "04-02", "04-06"]
    first = u1.iloc[0]
    assert (first.rating_count_7d, first.rating_count_total, first.avg_rating_7d) == (2, 2, 3.0)
    assert first.last_rating_ts == pd.Timestamp("1998-01-01 12:00", tz="UTC").timestamp()
    np.testing.assert_allclose(first.genre_share, [0.5, 1.0])  # Comedy 1 of 2 items, Drama 2 of 2
    at_0106 = u1.loc["1998-01-06"]
    assert (at_0106.rating_count_7d, at_0106.rating_count_30d) == (3, 3)
    np.testing.assert_allclose(at_0106.avg_rating_7d, 11 / 3, rtol=1e-6)
    at_0109 = u1.loc["1998-01-09"]  # the 01-01 ratings left the 7-day window (days 01-02..01-08)
    assert (at_0109.rating_count_7d, at_0109.avg_rating_7d) == (1, 5.0)
    last = u1.iloc[-1]
    assert (last.rating_count_90d, last.rating_count_total) == (0, 3) and np.isnan(last.avg_rating_90d)
    assert t.dtypes["rating_count_7d"] == "int64" and t.dtypes["avg_rating_7d"] == "float32"
    assert t.genre_share.iloc[0].dtype == np.float32


def test_item_content_rows_and_normalisation():
    t, stats = F.build_item_content(_items(), EVENTS, SPEC, VOCAB)
    i10 = t[t.item_id == 10]
    assert i10.event_timestamp.dt.strftime("%m-%d %H:%M").tolist() == ["01-01 10:00", "01-02 00:00", "01-03 00:00"]
    assert i10.rating_count.tolist() == [0, 1, 2] and np.isnan(i10.avg_rating.iloc[0])
    assert i10.avg_rating.iloc[-1] == 3.5
    assert stats["item_content.runtime"]["median"] == 105.0
    assert t[t.item_id == 20].runtime.iloc[0] == 0.0  # unknown runtime -> median -> z = 0
    assert t.popularity.min() == 0.0 and t.popularity.max() == 1.0
    np.testing.assert_array_equal(t[t.item_id == 20].genre_flags.iloc[0], [1.0, 1.0])


def test_histories_end_of_day_and_cap():
    h = F.user_histories(EVENTS, max_len=2)
    u1 = h[h.user_id == 1]
    assert u1.item_ids.tolist() == [[10, 20], [20, 30]]
    assert u1.event_timestamp.dt.strftime("%m-%d %H").tolist() == ["01-02 00", "01-06 00"]


@pytest.mark.slow   # full data set or the main job
def test_item_text_and_profile(catalog):
    spec = load_spec("feature_repo/catalog.yaml")
    text = F.item_text(catalog.items.set_index("item_id").loc[[72]].reset_index())[0]
    assert text == "Mask, The (1994). Comedy, Crime, Fantasy."  # wrong TMDB match dropped
    prof, _ = F.build_user_profile(catalog.users, catalog.events, spec)
    buckets = [b for *_, b in spec.users.numeric[0].buckets]
    assert len(prof) == 943 and prof.age_bucket.isin(buckets).all()
    assert prof.set_index("user_id").loc[1, "age_bucket"] == "18-24"


@pytest.mark.slow   # full data set or the main job
def test_real_behavior_never_sees_the_future(catalog):
    spec = load_spec("feature_repo/catalog.yaml")
    t = F.build_user_behavior(catalog.events, catalog.items, spec, {"genre": {"kept": ["Drama"]}})
    last = catalog.events.groupby("user_id").event_timestamp.max()
    latest = t.groupby("user_id").tail(1).set_index("user_id")
    assert (latest.event_timestamp > latest.index.map(last)).all()
    assert (latest.rating_count_total == catalog.events.groupby("user_id").size()).all()
    assert (t.last_rating_ts <= (t.event_timestamp.astype("int64") // 10**9)).all()
