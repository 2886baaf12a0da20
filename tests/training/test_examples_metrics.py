"""Labelled examples and ranking metrics on hand-made inputs with known answers."""

import numpy as np
import pandas as pd
import pytest

from recfeast.errors import ConfigError
from recfeast.training.config import TrainConfig
from recfeast.training.evaluate import rank_metrics
from recfeast.training.examples import labelled_examples, sample_unrated


def ts(s):
    return pd.Timestamp(s, tz="UTC")


EVENTS = pd.DataFrame({
    "user_id": [1, 1, 1, 2, 2, 1],
    "item_id": [10, 11, 12, 10, 13, 14],
    "value": [5.0, 2.0, 4.0, 4.0, 5.0, 5.0],
    "event_timestamp": [ts("2020-01-01"), ts("2020-01-02"), ts("2020-01-03"), ts("2020-01-03"), ts("2020-02-01"),
                        ts("2020-03-01")],
})
AVAILABLE = pd.Series({10: ts("2019-12-01"), 11: ts("2019-12-01"), 12: ts("2019-12-01"), 13: ts("2019-12-01"),
                       14: ts("2019-12-01"), 15: ts("2019-12-01"), 16: ts("2020-01-15"), 17: ts("2019-12-01")})


def test_negatives_unrated_as_of_time_and_in_catalog():
    anchors = pd.DataFrame({"user_id": [1, 1], "event_timestamp": [ts("2020-01-01"), ts("2020-01-03")]})
    later_rated_drawn = 0
    for seed in range(20):
        out = sample_unrated(EVENTS, anchors, 3, AVAILABLE, seed)
        first, second = out[out.anchor == 0].item_id.tolist(), out[out.anchor == 1].item_id.tolist()
        assert len(first) == len(second) == 3 and len(set(first)) == 3
        assert 10 not in first and 16 not in first  # rated at that moment; not yet in the catalog
        assert not {10, 11, 12} & set(second) and 16 not in second
        later_rated_drawn += bool({11, 12} & set(first))
    assert later_rated_drawn > 0  # items the user rates later are fair negatives as of the earlier moment
    a = sample_unrated(EVENTS, anchors, 3, AVAILABLE, 7)
    b = sample_unrated(EVENTS, anchors, 3, AVAILABLE, 7)
    pd.testing.assert_frame_equal(a, b)
    future = sample_unrated(EVENTS, anchors, 2, AVAILABLE, 0, exclude_future=True)
    assert not {10, 11, 12, 14} & set(future.item_id)


def test_labelled_examples_split_and_ratio():
    cfg = TrainConfig(val_start="2020-01-02", test_start="2020-02-15", negatives_per_positive=2, seed=0)
    ex = labelled_examples(EVENTS, AVAILABLE, cfg)
    pos = ex[ex.label == 1]
    assert len(pos) == 5 and len(ex) == 15  # ratings >= 4: five; two negatives each
    assert pos.split.tolist() == ["train", "val", "val", "val", "test"]
    assert (ex.groupby(["user_id", "event_timestamp"]).label.sum() >= 1).all()
    assert (ex.request_ts == ex.event_timestamp.astype("int64") // 10**9).all()
    assert ex.event_timestamp.is_monotonic_increasing
    with pytest.raises(ConfigError, match="must be before"):
        labelled_examples(EVENTS, AVAILABLE, TrainConfig(val_start="2020-03-01", test_start="2020-01-01"))
    with pytest.raises(ConfigError, match="test split is empty"):
        labelled_examples(EVENTS, AVAILABLE, TrainConfig(val_start="2020-01-02", test_start="2021-01-01"))


def test_rank_metrics_known_values():
    group = np.array([0] * 4 + [1] * 4 + [2] * 4)
    is_pos = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1], bool)
    scores = np.array([0.9, 0.1, 0.2, 0.3,   0.5, 0.4, 0.6, 0.1,   0.5, 0.5, 0.5, 0.5])
    m = rank_metrics(group, is_pos, scores, k=2)
    # ranks: 0; 2 (0.5 and 0.6 above 0.4); 1.5 (three ties count half) -> within k=2: the first and last
    assert m["users"] == 3 and m["hr@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / np.log2(3.5)) / 3)
    assert rank_metrics(group, is_pos, scores, k=1)["hr@1"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="has 0 positives"):
        rank_metrics(np.array([0, 0]), np.array([False, False]), np.array([1.0, 2.0]))


def test_paired_bootstrap_interval():
    from recfeast.training.evaluate import paired_bootstrap

    a = np.r_[np.ones(50), np.zeros(50)]
    same = paired_bootstrap(a, a)
    assert same == {"diff": 0.0, "ci95": [0.0, 0.0]}
    better = paired_bootstrap(a + 0.1, a)  # every user gains exactly 0.1: no sampling spread
    assert better["diff"] == pytest.approx(0.1) and better["ci95"] == pytest.approx([0.1, 0.1])
    noisy = paired_bootstrap(np.random.default_rng(1).random(200), np.random.default_rng(2).random(200))
    lo, hi = noisy["ci95"]
    assert lo < noisy["diff"] < hi and hi - lo > 0.05


@pytest.mark.parametrize("kwargs, msg", [
    ({"val_start": "garbage"}, "expected dates"), ({"test_start": "1998-13-01"}, "expected dates"),
    ({"negatives_per_positive": 0}, "negatives_per_positive=0"), ({"max_epochs": 0}, "max_epochs=0"),
    ({"eval_max_users": -1}, "eval_max_users=-1"), ({"eval_negatives": 0}, "eval_negatives=0"),
    ({"groups": ("behavior", "foo")}, r"unknown feature group\(s\) \['foo'\]"),
])
def test_config_validation(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**kwargs).validate()


def test_duplicate_negatives_dropped_and_request_ts_unit():
    ev = pd.concat([EVENTS, EVENTS.iloc[[0]].assign(item_id=11, value=5.0)], ignore_index=True)  # 2 positives at once
    ev["event_timestamp"] = ev.event_timestamp.astype("datetime64[us, UTC]")
    ex = labelled_examples(ev, AVAILABLE, TrainConfig(val_start="2020-01-02", test_start="2020-02-15"))
    assert not ex.duplicated(["user_id", "event_timestamp", "item_id"]).any()
    assert ex.request_ts.iloc[0] == 1577836800  # 2020-01-01 in seconds, whatever the timestamp unit


def test_transform_refuses_vectors_of_another_model():
    from recfeast.errors import DataError
    from recfeast.ranking.features import FeatureSpec

    row = {"gender": "M", "occupation": "x", "age_bucket": "25-34", "genre_share": np.ones(2, np.float32),
           "genre_flags": np.ones(2, np.float32), "text_embedding": np.ones(4, np.float32)}
    frame = pd.DataFrame([row, row])
    for c in ("age", "avg_rating_7d", "avg_rating_30d", "avg_rating_90d", "avg_rating_total", "release_year", "runtime",
              "avg_rating", "popularity", "days_since_last_rating", "rating_count_7d", "rating_count_30d",
              "rating_count_90d", "rating_count_total", "rating_count"):
        frame[c] = 1.0
    spec = FeatureSpec.fit(frame, ("behavior", "text"))
    assert spec.transform(frame)["text_embedding"].shape == (2, 4)
    other = frame.assign(text_embedding=[np.ones(3, np.float32)] * 2)
    with pytest.raises(DataError, match="'text_embedding': 2 vectors of length 3, the model expects 4"):
        spec.transform(other)
