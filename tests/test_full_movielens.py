"""The whole of MovieLens-100k through `recfeast materialize`, into SQLite and Redis, then `recfeast lookup`."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from recfeast.cli import main
from recfeast import store
from recfeast.materialize import online
from tests.conftest import DATA_DIR, ROOT, drop_online, latest_rows, make_repo, unique_project

pytestmark = pytest.mark.slow


#: embeddings of the full catalog kept between test sessions, keyed like every embedding cache by
#: (model identity, sha256 of the input): a later session re-encodes nothing that did not change.
#: RECFEAST_TEST_FRESH_EMBEDDINGS=1 encodes everything again (the slice tests always encode).
SHARED_CACHE = Path(os.environ.get("RECFEAST_TEST_EMBEDDING_CACHE", ROOT / ".pytest_cache" / "recfeast_embedding_cache"))


@pytest.fixture(scope="module")
def full_repo(tmp_path_factory, data_dir):
    repo = make_repo(tmp_path_factory.mktemp("full") / "feature_repo", "movielens")
    cache = repo / "data" / "embedding_cache"
    if SHARED_CACHE.is_dir() and not os.environ.get("RECFEAST_TEST_FRESH_EMBEDDINGS"):
        shutil.copytree(SHARED_CACHE, cache)
    result = CliRunner().invoke(main, ["materialize", "--data-dir", str(data_dir), "--repo-path", str(repo),
                                       "--online-store", "sqlite", "--quiet"])
    assert result.exit_code == 0, result.output
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    for f in cache.glob("*.parquet"):       # atomic per file: a concurrent session reads whole files
        tmp = SHARED_CACHE / f".{f.name}.tmp"
        shutil.copy(f, tmp)
        os.replace(tmp, SHARED_CACHE / f.name)
    return repo, result.output


def _online_counts(fs):
    """(items found in every item view but images, users found in every user view) via one online read each."""
    items = list(range(1, 1683))
    users = list(range(1, 944))
    item_resp = fs.get_online_features(
        features=["item_text_embedding:text_model", "item_content:popularity", "item_image_embedding:image_model"],
        entity_rows=[{"item_id": i} for i in items]).to_dict()
    user_resp = fs.get_online_features(
        features=["user_profile:gender", "user_behavior:rating_count_total", "user_sequence_embedding:sequence_model"],
        entity_rows=[{"user_id": u} for u in users]).to_dict()
    n_items = sum(t is not None and p is not None for t, p in zip(item_resp["text_model"], item_resp["popularity"]))
    n_images = sum(m is not None for m in item_resp["image_model"])
    n_users = sum(all(user_resp[k][i] is not None for k in ("gender", "rating_count_total", "sequence_model"))
                  for i in range(len(users)))
    return n_items, n_images, n_users


def test_full_run_summary(full_repo):
    repo, output = full_repo
    assert "item_text_embedding" in output and "1682" in output
    assert "items/low_enrichment_confidence" in output and "dropped unknown" in output
    summary = json.loads((repo / "data" / "tables" / "run_summary.json").read_text())
    assert summary["tables"]["item_text_embedding"]["rows"] == 1682
    assert summary["tables"]["user_profile"]["rows"] == 943
    assert summary["tables"]["user_sequence_embedding"]["rows"] == 2515  # user-days with ratings
    assert summary["tables"]["item_image_embedding"]["rows"] == 1682 - 45 - 8  # wrong matches, no poster
    assert summary["quarantine"] == {"items/empty_description": 8, "items/image_missing": 8,
                                     "items/low_enrichment_confidence": 45}
    sel = json.loads((repo / "data" / "tables" / "feature_selection.json").read_text())
    assert list(sel["genre"]["dropped"]) == ["unknown"] and len(sel["genre"]["kept"]) == 18


def test_all_items_and_users_online_sqlite_and_redis(full_repo):
    repo, _ = full_repo
    assert _online_counts(store.feature_store(repo, "sqlite")) == (1682, 1629, 943)
    fs = store.feature_store(repo, "redis", unique_project())
    try:
        store.apply(fs)
        online.load(fs, repo / "data" / "tables")
        assert _online_counts(fs) == (1682, 1629, 943)
    finally:
        drop_online(fs)


def test_lookup_cli_prints_real_vectors(full_repo):
    repo, _ = full_repo
    result = CliRunner().invoke(main, ["lookup", "--user", "196", "--items", "242,302,377", "--repo-path", str(repo),
                                       "--online-store", "sqlite", "--request-ts", "893000000"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["feature_service"] == "ranking_v1" and [i["item_id"] for i in out["items"]] == [242, 302, 377]
    text = latest_rows(pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet"), "item_id")
    for rec in out["items"]:
        assert len(rec["text_embedding"]) == 384 and len(rec["image_embedding"]) == 1280
        np.testing.assert_array_equal(np.float32(rec["text_embedding"]), text.loc[rec["item_id"], "text_embedding"])
        assert rec["days_since_last_event"] == pytest.approx((893000000 - rec["last_rating_ts"]) / 86400)
        assert all(v == "found" for v in rec["status"].values())
    bad = CliRunner().invoke(main, ["lookup", "--user", "196", "--items", "24x", "--repo-path", str(repo)])
    assert bad.exit_code == 2 and "expected an integer (this catalog's item ids are int64)" in bad.output


@pytest.mark.parametrize("kind,batch_size", [("sqlite", 20), ("redis", 5)])
def test_replay_last_two_weeks_online_equals_batch(full_repo, tmp_path, kind, batch_size):
    """The replay check on all of MovieLens-100k: the ratings before the last 14 days backfilled,
    the last 14 days (3,815 ratings) streamed in time order, every user's online real-time state
    equal to the batch recomputation from the event log. (`recfeast replay-check --batch-size 1`
    streams event by event; see README.)"""
    from recfeast.materialize.replay import replay_check

    src, _ = full_repo
    repo = make_repo(tmp_path / "repo", "movielens")
    shutil.copytree(src / "data" / "tables", repo / "data" / "tables")   # a log of its own per store
    project = unique_project()
    fs = store.feature_store(repo, kind, project)
    try:
        store.apply(fs)
        report = replay_check(DATA_DIR, repo, kind, project, days=14, batch_size=batch_size, progress=False)
        assert (report.backfilled, report.streamed, report.users_compared) == (96_185, 3_815, 943)
        assert report.mismatches == [] and report.max_vector_abs_diff <= 1e-5 and report.ok
    finally:
        drop_online(fs)
