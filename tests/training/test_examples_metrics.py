"""Labelled examples and ranking metrics on hand-made inputs with known answers."""

import numpy as np
import pandas as pd
import pytest

from recfeast.errors import ConfigError
from recfeast.spec import load_spec
from recfeast.training.config import TrainConfig
from recfeast.views import field_roles
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
    with pytest.raises(ConfigError, match=r"the test split has no positive example: 5 positives in all, .* 0 after \(test\)"):
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
    ({"val_start": "garbage", "test_start": "1998-03-29"}, "expected dates"),
    ({"val_start": "1998-03-01", "test_start": "1998-13-01"}, "expected dates"),
    ({"val_start": "1998-03-01"}, "give both val_start and test_start"),
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
              "avg_rating", "popularity", "days_since_last_event", "rating_count_7d", "rating_count_30d",
              "rating_count_90d", "rating_count_total", "rating_count"):
        frame[c] = 1.0
    roles = field_roles(load_spec("feature_repo/catalog.yaml"))
    spec = FeatureSpec.fit(frame, ("behavior", "text"), roles)
    assert spec.transform(frame)["text_embedding"].shape == (2, 4)
    other = frame.assign(text_embedding=[np.ones(3, np.float32)] * 2)
    with pytest.raises(DataError, match="'text_embedding': 2 vectors of length 3, the model expects 4"):
        spec.transform(other)


def test_near_constant_training_column_is_dropped_not_blown_up():
    """A column constant up to rounding (std ~1e-16) used to be scaled by its std to ~1e15 at serving."""
    from recfeast.ranking.features import FeatureSpec

    roles = field_roles(load_spec("feature_repo/catalog.yaml"))
    n = 200
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "popularity": np.full(n, 0.1) + rng.normal(0, 1e-17, n),        # constant up to rounding
        "avg_rating_total": rng.normal(3.5, 0.5, n),                    # a real signal
        "rating_count_total": rng.integers(0, 50, n).astype(float),
        "gender": rng.choice(["M", "F"], n),
    })
    assert 0 < frame.popularity.std() < 1e-15
    spec = FeatureSpec.fit(frame, ("behavior",), roles)
    assert "popularity" in spec.dropped and "popularity" not in spec.mean
    assert [c for c, _ in spec.scalars] == ["rating_count_total", "avg_rating_total"]   # the views' order
    serve = frame.head(3).assign(popularity=0.1000001)                  # a value seen at serving time
    dense = spec.transform(serve)["dense"]
    assert dense.shape == (3, 2 * 2 + 2) and np.abs(dense).max() < 10   # 2 scalars + missing flags + one-hot
    assert spec.dense_names() == ["rating_count_total", "rating_count_total_missing", "avg_rating_total",
                                  "avg_rating_total_missing", "gender=F", "gender=M"]


def test_roles_not_names_pick_the_inputs():
    """An H&M-shaped frame: purchase counts, price means, colour flags/shares and a string label are
    turned into inputs by their role; the share/flags pair gives a match scalar."""
    from recfeast.ranking.features import FeatureSpec

    roles = field_roles(load_spec("examples/hm/catalog.yaml"))
    rng = np.random.default_rng(1)
    n = 50
    flags = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    share = rng.dirichlet(np.ones(3), n).astype(np.float32)
    frame = pd.DataFrame({"purchase_count_7d": rng.integers(0, 5, n), "avg_price_total": rng.random(n),
                          "club_member_status": rng.choice(["ACTIVE", "PRE-CREATE"], n),
                          "colour_flags": list(flags), "colour_share": list(share),
                          "last_purchase_ts": rng.integers(1, 10**9, n), "text_model": "m"})
    spec = FeatureSpec.fit(frame, ("behavior",), roles)
    assert [c for c, _ in spec.scalars] == ["purchase_count_7d", "avg_price_total", "colour_match"]
    assert spec.vocab == {"club_member_status": ["ACTIVE", "PRE-CREATE"]}
    assert spec.vectors == {"colour_flags": "behavior", "colour_share": "behavior"}
    out = spec.transform(frame)
    match = (share * flags).sum(1)
    np.testing.assert_allclose(out["dense"][:, 4], (match - match.mean()) / match.std(), rtol=1e-4, atol=1e-5)


def test_plots_mark_the_kept_epoch_and_draw_intervals(tmp_path):
    """The ablation plot starts its bars at 0 and draws the ranking metrics' intervals; the curves
    mark the kept epoch (lowest validation loss) per variant."""
    import matplotlib.image as mpimg

    from recfeast.training.task import _plots

    hist = {"a": [{"epoch": 1, "train_loss": 0.6, "val_loss": 0.5}, {"epoch": 2, "train_loss": 0.5, "val_loss": 0.45}]}
    abl = pd.DataFrame({"variant": ["a"], "auc": [0.8], "ndcg@10": [0.5], "hr@10": [0.7]})
    _plots(tmp_path, hist, abl, 10, {"a": {"ndcg@10": [0.45, 0.55], "hr@10": [0.6, 0.8]}})
    for name in ("training_curves.png", "ablation.png"):
        img = mpimg.imread(tmp_path / name)
        assert img.shape[0] > 300 and img.shape[1] > 1000 and img.std() > 0.05, name


def test_vector_buffers_give_the_same_inputs_without_a_copy():
    """A training set's vector columns are float32 Arrow buffers (no object per row): fit and transform
    read them in place and give exactly the inputs of the per-row arrays; a split is a slice, still no copy."""
    from recfeast.io import indexed_vector_series, vector_series
    from recfeast.ranking.features import FeatureSpec, IndexedRows
    from recfeast.training.task import split_rows

    roles = field_roles(load_spec("examples/hm/catalog.yaml"))
    rng = np.random.default_rng(2)
    n = 60
    flags = np.eye(3, dtype=np.float32)[rng.integers(0, 3, n)]
    share = rng.dirichlet(np.ones(3), n).astype(np.float32)
    present = np.ones(n, bool)
    present[[3, 40]] = False   # two users without a share vector
    share[~present] = 0
    rows = pd.DataFrame({"purchase_count_7d": rng.integers(0, 5, n), "avg_price_total": rng.random(n),
                         "club_member_status": rng.choice(["ACTIVE", "PRE-CREATE"], n),
                         "colour_flags": list(flags), "colour_share": [v if p else None for v, p in zip(share, present)],
                         "split": ["train"] * 40 + ["val"] * 10 + ["test"] * 10})
    buffers = rows.assign(colour_flags=vector_series(flags), colour_share=vector_series(share, present))
    assert str(buffers.colour_share.dtype) == "fixed_size_list<item: float>[3][pyarrow]"
    spec_rows = FeatureSpec.fit(rows.iloc[:40], ("behavior",), roles)
    parts = split_rows(buffers)
    assert [len(p) for p in parts.values()] == [40, 10, 10]
    spec = FeatureSpec.fit(parts["train"], ("behavior",), roles)
    assert spec.to_dict() == spec_rows.to_dict() and spec.dims == {"colour_flags": 3, "colour_share": 3}
    for name, frame in parts.items():
        got, want = spec.transform(frame), spec_rows.transform(rows[rows.split == name])
        assert set(got) == set(want) == {"dense", "colour_flags", "colour_share"}
        for k in got:
            assert got[k].dtype == np.float32 and got[k].shape == want[k].shape
            np.testing.assert_array_equal(got[k], want[k])
    test = spec.transform(parts["test"])
    assert np.shares_memory(test["colour_flags"], flags) and np.shares_memory(test["colour_share"], share)
    assert spec.transform(parts["train"])["colour_share"][[3]].tolist() == [[0.0, 0.0, 0.0]]
    # stored once per distinct vector (3 one-hot flags for 60 rows): indexed inputs gather the same rows
    table, inverse = np.unique(flags, axis=0, return_inverse=True)
    indexed = buffers.assign(colour_flags=indexed_vector_series(table, inverse.reshape(-1)))
    assert str(indexed.colour_flags.dtype).startswith("dictionary<values=fixed_size_list<item: float>[3]")
    lazy = spec.transform(indexed, indexed=True)
    assert isinstance(lazy["colour_flags"], IndexedRows) and lazy["colour_flags"].shape == (n, 3)
    assert lazy["colour_flags"].table.shape == (4, 3)   # 3 distinct rows + the zero row for missing ones
    want = spec_rows.transform(rows)
    np.testing.assert_array_equal(lazy["colour_flags"][np.arange(n)], want["colour_flags"])
    np.testing.assert_array_equal(lazy["colour_flags"][10:20], want["colour_flags"][10:20])
    np.testing.assert_array_equal(np.asarray(lazy["colour_flags"]), want["colour_flags"])
    np.testing.assert_array_equal(lazy["dense"], want["dense"])
    assert lazy["colour_flags"][[0]].dtype == np.float32
