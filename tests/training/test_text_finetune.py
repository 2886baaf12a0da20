"""Text fine-tuning: task data and metrics on hand-made inputs, and a tiny real run whose checkpoint
reloads alone."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recfeast.errors import ConfigError
from recfeast.training.text_data import (best_threshold, corating_pairs, genre_task, micro_f1, next_item_metrics,
                                         split_pairs)
from recfeast.training.text_finetune import TextFinetuneConfig

T = pd.Timestamp("1998-01-01", tz="UTC")


def _ev(rows):
    return pd.DataFrame([{"user_id": u, "item_id": i, "action": a, "value": v, "event_timestamp": T + pd.Timedelta(minutes=m)}
                         for u, i, a, v, m in rows])


def test_corating_pairs_need_same_user_liked_and_close_in_time():
    events = _ev([(1, 10, "rate", 5, 0), (1, 11, "rate", 4, 30), (1, 12, "rate", 2, 40), (1, 13, "rate", 5, 45),
                  (1, 14, "rate", 5, 200), (2, 15, "rate", 5, 46), (1, 16, "click", 1, 201)])
    pairs = corating_pairs(events, window_s=3600, min_rating=4)
    # 10->11 (30 min); 11->13 (15 min, the 2-star rating is not liked); 13->14 is 155 min apart
    assert pairs[["user_id", "query_item", "target_item"]].values.tolist() == [[1, 10, 11], [1, 11, 13]]
    parts = split_pairs(pairs, "1998-01-01 00:40", "1998-01-02")
    assert (len(parts["train"]), len(parts["val"]), len(parts["test"])) == (1, 1, 0)


def test_next_item_metrics_rank_and_exclusions():
    emb = np.eye(4, dtype=np.float32)
    emb[1] = [0.8, 0.6, 0, 0]          # item 11 is the nearest to item 10
    emb[2] = [0.6, 0, 0.8, 0]          # item 12 second
    ids = np.array([10, 11, 12, 13])
    events = _ev([(1, 11, "rate", 5, 0), (1, 10, "rate", 5, 10), (1, 12, "rate", 5, 20)])
    pairs = pd.DataFrame({"user_id": [1], "query_item": [10], "target_item": [12], "event_timestamp": [T + pd.Timedelta(minutes=20)]})
    m = next_item_metrics(emb, ids, pairs, events, k=1)
    # 11 was rated before the target: excluded, so 12 ranks first
    assert (m["recall@1"], m["ndcg@1"], m["pairs"]) == (1.0, 1.0, 1)
    m2 = next_item_metrics(emb, ids, pairs, events.iloc[1:], k=2)   # 11 not rated: 12 is second
    assert m2["recall@2"] == 1.0 and m2["ndcg@2"] == pytest.approx(1 / np.log2(3))


def test_threshold_and_micro_f1():
    labels = np.array([[1, 0], [0, 1], [1, 1]])
    probs = np.array([[0.3, 0.1], [0.2, 0.35], [0.4, 0.3]])
    t = best_threshold(probs, labels)
    assert 0.2 < t <= 0.3 and micro_f1(probs, labels, t) == 1.0   # the lowest threshold that separates
    assert micro_f1(probs, labels, 0.5) == 0.0


@pytest.mark.slow   # full data set or the main job
def test_genre_task_has_no_genre_names_and_splits_by_date(catalog):
    gt = genre_task(catalog.items)
    assert gt.labels.shape == (len(catalog.items), 18) and gt.labels.dtype == np.float32
    assert "unknown" not in gt.genres
    star_wars = gt.texts[int(np.flatnonzero(gt.item_ids == 50)[0])]
    assert star_wars.startswith("Star Wars (1977)") and "Sci-Fi" not in star_wars
    dates = catalog.items["release_date"]
    assert dates[gt.split == "test"].min() >= dates[gt.split == "val"].max()
    assert (gt.split == "test").sum() == round(dates.notna().sum() * 0.15)


def test_config_refuses_bad_values():
    for bad in ({"tasks": ("genre", "ranking")}, {"pair_batch_size": 1}, {"lr": 0}, {"max_epochs": 0},
                {"genre_test_share": 1.5}):
        with pytest.raises(ConfigError):
            TextFinetuneConfig(**bad).validate()


@pytest.mark.slow
def test_tiny_finetune_saves_a_checkpoint_that_reloads_alone(tiny_text_finetune):
    from recfeast.encoders.text import TextEncoder

    cfg, res, _ = tiny_text_finetune
    ft = Path(cfg.out_dir)
    meta = json.loads((ft / "model" / "finetune.json").read_text())
    assert meta["model_id"] == res["model_id"] != res["base_model_id"]
    assert meta["config"]["max_items"] == 40 and meta["lineage"]["counts"]["items"] == 40
    assert [c["epoch"] for c in meta["curves"]] == [0, 1] and meta["curves"][1]["train"] > 0
    assert set(meta["metrics"]["before"]) >= {"genre_probe_micro_f1", "recall@10", "ndcg@10", "pairs"}
    enc = TextEncoder(ft / "model", name=cfg.name)            # the folder alone
    assert enc.model_id == res["model_id"] and enc.max_length == 32
    a = enc.encode(["Star Wars (1977). A farm boy joins the rebels."])
    assert a.shape == (1, 384) and a.dtype == np.float32 and np.isclose(np.linalg.norm(a), 1.0)
    assert (ft / "training_curves.png").stat().st_size > 1000
