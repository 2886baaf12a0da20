"""The columnar ranker (``Ranker.score``) against the DataFrame path it replaced (``score_frame``), on a
tiny model fitted here: same scores, the same refusals, and the same answers from many threads."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import torch

from recfeast.errors import ModelError
from recfeast.layout import FLOAT32, FLOAT64, INT64, STRING, VECTOR
from recfeast.ranking.checkpoint import save_checkpoint
from recfeast.ranking.features import FeatureSpec
from recfeast.ranking.model import RankingModel
from recfeast.serving.ranker import Ranker
from recfeast.serving.sdk import RankingFeatures
from recfeast.views import FieldDef

TEXT_MODEL = "minilm@sha256:000000000001"
DIMS = {"text_embedding": 12, "image_embedding": 20, "sequence_embedding": 12, "genre_share": 5, "genre_flags": 5}
ROLES = {
    "rating_count_7d": FieldDef("rating_count_7d", "int64", "count", ""),
    "avg_rating_30d": FieldDef("avg_rating_30d", "float32", "numeric", ""),
    "popularity": FieldDef("popularity", "float64", "numeric", ""),
    "gender": FieldDef("gender", "string", "categorical", ""),
    "genre_share": FieldDef("genre_share", "vector", "vector", ""),
    "genre_flags": FieldDef("genre_flags", "vector", "vector", ""),
    "text_embedding": FieldDef("text_embedding", "vector", "vector", "", group="text"),
    "image_embedding": FieldDef("image_embedding", "vector", "vector", "", group="image"),
    "sequence_embedding": FieldDef("sequence_embedding", "vector", "vector", "", group="sequence"),
}
KINDS = {"rating_count_7d": INT64, "avg_rating_30d": FLOAT32, "popularity": FLOAT64, "gender": STRING,
         "text_model": STRING, **{c: VECTOR for c in DIMS}}


def _features(n: int, seed: int, text_model: str = TEXT_MODEL) -> RankingFeatures:
    """One user and n items as the SDK returns them: user columns repeated, NaN rows and nulls for
    missing values (an item without a poster, one without any row, a user count that is null)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 40, n)
    null = rng.random(n) < 0.2
    arrays = {"user_id": np.full(n, 7, np.int64), "item_id": np.arange(100, 100 + n, dtype=np.int64),
              "rating_count_7d": np.where(null, np.nan, counts.astype(np.float64)),
              "avg_rating_30d": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(1, 5, n)).astype(np.float32),
              "popularity": rng.exponential(3.0, n), "gender": np.array(rng.choice(["F", "M", None], n), object),
              "text_model": np.full(n, text_model, object)}
    for c, d in DIMS.items():
        v = rng.normal(size=(n, d)).astype(np.float32)
        if c == "sequence_embedding":
            v[:] = v[0]                     # the user's vector on every row
        elif c == "genre_flags":
            v = (v > 0).astype(np.float32)
        v[rng.random(n) < 0.15] = np.nan    # missing rows
        arrays[c] = v
    arrays["text_model"][np.isnan(arrays["text_embedding"]).any(axis=1)] = None
    status = pd.DataFrame({"item_content": np.full(n, "found", object)})
    ints = {"rating_count_7d": (np.where(null, 0, counts), null)}
    return RankingFeatures(arrays, dict(KINDS), status, "ranking_v1", 893_300_000, ints)


@pytest.fixture(scope="module")
def ranker(tmp_path_factory):
    """A Ranker over a tiny model fitted on synthetic columns with every input role."""
    train = _features(400, seed=1).arrays
    spec = FeatureSpec.fit(train, ("text", "image", "sequence"), ROLES)
    torch.manual_seed(0)
    model = RankingModel(len(spec.dense_names()), spec.dims, (16, 8), 0.0, 4)
    path = tmp_path_factory.mktemp("tiny_ranker") / "ranking_model.pt"
    save_checkpoint(path, model, {"hidden": [16, 8], "dropout": 0.0, "feature_service": "ranking_v1"}, spec,
                    [f"v:{c}" for c in ROLES], {}, {"auc": 0.5}, model_ids={"text_model": [TEXT_MODEL]})
    return Ranker(path)


def test_columnar_scores_equal_the_dataframe_path(ranker):
    assert "rating_count_7d" in dict(ranker.spec.scalars) and "genre_match" in dict(ranker.spec.scalars)
    assert ranker.spec.vocab == {"gender": ["F", "M"]} and "image_present" in ranker.spec.dense_names()
    for seed in range(4):
        feats = _features(120, seed=10 + seed)
        fast, ref = ranker.score(feats), ranker.score_frame(feats)
        assert fast.shape == (120,) and fast.dtype == np.float32
        assert ((fast > 0) & (fast < 1)).all() and np.unique(fast).size > 100
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-5)


def test_anonymous_user_columns_score_as_missing(ranker):
    """An anonymous request carries (n, 0) user vectors: missing, not another encoder's width."""
    feats = _features(30, seed=3)
    feats.arrays["sequence_embedding"] = np.full((30, 0), np.nan, np.float32)
    fast = ranker.score(feats)
    with_nan = _features(30, seed=3)
    with_nan.arrays["sequence_embedding"][:] = np.nan
    np.testing.assert_allclose(fast, ranker.score(with_nan), rtol=0, atol=1e-6)
    np.testing.assert_allclose(fast, ranker.score_frame(feats), rtol=0, atol=1e-5)


def test_both_paths_refuse_other_encoders(ranker):
    feats = _features(10, seed=5, text_model="other@sha256:ff")
    for score in (ranker.score, ranker.score_frame):
        with pytest.raises(ModelError, match=r"text_embedding of items \[100, 101"):
            score(feats)
    wide = _features(10, seed=5)
    wide.arrays["text_embedding"] = np.ones((10, 13), np.float32)
    with pytest.raises(ModelError, match="'text_embedding': vectors of length 13, the model expects 12"):
        ranker.score(wide)


def test_concurrent_requests_score_as_sequential_ones(ranker):
    """Eight threads scoring different requests at once get exactly the sequential answers."""
    torch.set_num_threads(1)
    reqs = [_features(120, seed=100 + i) for i in range(16)]
    want = [ranker.score(f) for f in reqs]
    got: dict[int, list] = {}
    errors = []
    start = threading.Barrier(8)

    def worker(t):
        try:
            start.wait()
            for _ in range(10):
                for i in range(t, len(reqs), 8):
                    got.setdefault(i, []).append(ranker.score(reqs[i]))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(got) == list(range(16))
    for i, outs in got.items():
        assert len(outs) == 10
        for out in outs:
            np.testing.assert_array_equal(out, want[i])


def test_transform_one_hots_and_vectors_as_plain_comparisons(ranker):
    """The one-hot block equals ``(column == value)`` per vocabulary value (a user's label on every
    row, mixed labels, None, a label outside the vocabulary, a non-string), and vectors without
    missing rows pass through unchanged."""
    spec = ranker.spec
    for labels in (["F"] * 6, ["M", "F", None, "X", 3, "M"], [None] * 6, ["X"] * 6):
        feats = _features(6, seed=7)
        feats.arrays["gender"] = np.array(labels, object)
        dense = spec.transform(feats.arrays)["dense"]
        names = spec.dense_names()
        for val in spec.vocab["gender"]:
            want = np.array([x == val for x in labels], np.float32)
            np.testing.assert_array_equal(dense[:, names.index(f"gender={val}")], want)
    full = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
    feats = _features(5, seed=8)
    feats.arrays["text_embedding"] = full
    out = spec.transform(feats.arrays)["text_embedding"]
    np.testing.assert_array_equal(out, full)
    assert out.dtype == np.float32 and out.shape == (5, 12)
