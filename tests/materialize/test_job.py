"""The main job on a real slice: tables, schemas, quarantine, idempotent reruns, SQLite and Redis,
and Feast's own CLI on the repository."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recfeast import store
from recfeast.materialize import online
from recfeast.materialize.job import TABLES, JobConfig, run
from recfeast.serving.sdk import OnlineFeatureClient
from tests.conftest import assert_vectors_equal, drop_online, latest_rows, make_repo, unique_project

pytestmark = pytest.mark.slow
VEC = pa.list_(pa.float32())
TS = pa.timestamp("us", tz="UTC")


def test_tables_schemas_and_row_counts(small_run, small_data):
    repo, summary, _ = small_run
    facts = small_data[1]
    tables = repo / "data" / "tables"
    n_items, n_users = facts["n_items"], facts["n_users"]
    schema = {name: pq.read_schema(tables / f"{name}.parquet") for name in TABLES}
    assert schema["item_text_embedding"].field("text_embedding").type == VEC
    assert schema["item_image_embedding"].field("image_embedding").type == VEC
    assert schema["user_sequence_embedding"].field("sequence_embedding").type == VEC
    assert schema["item_content"].field("genre_flags").type == VEC
    for name, s in schema.items():
        assert s.field("event_timestamp").type == TS and s.field("created_timestamp").type == TS, name
        assert s.field("user_id" if name.startswith("user") else "item_id").type == pa.int64(), name
    text = pd.read_parquet(tables / "item_text_embedding.parquet")
    assert len(text) == n_items and text.item_id.is_unique
    assert np.stack(text.text_embedding).shape == (n_items, 384)
    img = pd.read_parquet(tables / "item_image_embedding.parquet")
    missing_img = {9001, 9002, 72, *facts["no_image"]}  # corrupt, truncated, wrong match, no poster
    assert sorted(img.item_id) == sorted(set(facts["item_ids"]) - missing_img)
    assert np.stack(img.image_embedding).shape == (len(img), 1280)
    assert len(pd.read_parquet(tables / "user_profile.parquet")) == n_users
    assert summary.tables["item_text_embedding"]["rows"] == n_items
    assert summary.online_store == "sqlite"
    assert set(summary.seconds) >= {"read", "clean", "encode text", "encode images", "feast materialize"}


def test_bad_input_quarantined_and_job_completes(small_run):
    repo, summary, _ = small_run
    q = pd.read_parquet(repo / "data" / "tables" / "quarantine.parquet")
    by_rule = q.groupby("rule").entity_key.apply(sorted).to_dict()
    assert by_rule["image_corrupt"] == ["9001", "9002"]
    assert "UnidentifiedImageError" in q[q.entity_key == "9001"].detail.iat[0]
    assert "truncated" in q[q.entity_key == "9002"].detail.iat[0]
    assert by_rule["low_enrichment_confidence"] == ["72"]
    for rule in ("value_out_of_range", "unknown_user", "unknown_item", "unparsable_timestamp",
                 "unparsable_value", "duplicate_event", "empty_description", "unparsable_age", "image_missing"):
        assert summary.quarantine[f"{q[q.rule == rule].table.iat[0]}/{rule}"] == len(by_rule[rule]) >= 1
    assert (q.source.str.contains(":")).all()


def test_rerun_is_idempotent(small_run, small_data):
    repo, first, project = small_run
    tables = repo / "data" / "tables"
    before = {n: pd.read_parquet(tables / f"{n}.parquet") for n in TABLES}
    again = run(JobConfig(data_dir=small_data[0], repo=repo, online_store="sqlite", project=project, progress=False))
    for name in TABLES:
        assert again.tables[name]["unchanged"] == again.tables[name]["rows"] == first.tables[name]["rows"], name
        pd.testing.assert_frame_equal(pd.read_parquet(tables / f"{name}.parquet"), before[name])
    # nothing re-embedded: every text and poster comes from the embedding cache (the two broken
    # posters are tried again: failures are not cached)
    assert again.embeddings["text"] == {"computed": 0, "reused": first.tables["item_text_embedding"]["rows"]}
    assert again.embeddings["image"]["computed"] == 2
    # the summary counts what each load wrote online (one row per entity), not what changed in the tables
    for name in TABLES:
        if name == "user_realtime":
            assert "loaded_online" not in again.tables[name]   # pushed by the ingest path
            continue
        key = "user_id" if name.startswith("user") else "item_id"
        n = before[name][key].nunique()
        assert first.tables[name]["loaded_online"] == again.tables[name]["loaded_online"] == n > 0, name
    assert "loaded online" in again.render()


def _check_online_equals_tables(client, repo, user_id, item_ids):
    tables = repo / "data" / "tables"
    feats = client.get_features(user_id, item_ids)
    frame, status = feats.frame, feats.status
    text = latest_rows(pd.read_parquet(tables / "item_text_embedding.parquet"), "item_id")
    img = latest_rows(pd.read_parquet(tables / "item_image_embedding.parquet"), "item_id")
    content = latest_rows(pd.read_parquet(tables / "item_content.parquet"), "item_id")
    beh = latest_rows(pd.read_parquet(tables / "user_behavior.parquet"), "user_id").loc[user_id]
    seq = latest_rows(pd.read_parquet(tables / "user_sequence_embedding.parquet"), "user_id").loc[user_id]
    for row, st in zip(frame.itertuples(), status.itertuples()):
        assert_vectors_equal(row.text_embedding, text.loc[row.item_id, "text_embedding"])
        assert row.text_model == text.loc[row.item_id, "text_model"]
        if row.item_id in img.index:
            assert_vectors_equal(row.image_embedding, img.loc[row.item_id, "image_embedding"])
            assert st.item_image_embedding == "found"
        else:
            assert row.image_embedding is None and st.item_image_embedding == "missing"
        assert row.popularity == content.loc[row.item_id, "popularity"]
        assert row.rating_count == content.loc[row.item_id, "rating_count"]
        assert_vectors_equal(row.genre_flags, content.loc[row.item_id, "genre_flags"])
        assert_vectors_equal(row.sequence_embedding, seq.sequence_embedding)
        assert row.rating_count_total == beh.rating_count_total and row.avg_rating_total == beh.avg_rating_total
        expected_cos = float(np.dot(seq.sequence_embedding.astype(np.float64), text.loc[row.item_id, "text_embedding"]))
        assert row.user_item_cosine == pytest.approx(expected_cos, abs=1e-6)
    assert frame.text_embedding.iat[0].dtype == np.float32 and frame.popularity.dtype == np.float32
    return feats


def test_sqlite_and_redis_read_back_equal_tables(small_run, small_data):
    repo, _, project = small_run
    facts = small_data[1]
    user = facts["user_ids"][1]
    items = facts["item_ids"][:12] + [9001, 424242]
    sqlite = _check_online_equals_tables(OnlineFeatureClient(repo, "sqlite", project=project), repo, user, items[:-1])
    fs = store.feature_store(repo, "redis", project)
    try:
        store.apply(fs)
        online.load(fs, repo / "data" / "tables")
        client = OnlineFeatureClient(repo, "redis", project=project)
        redis = _check_online_equals_tables(client, repo, user, items[:-1])
        pd.testing.assert_frame_equal(redis.status, sqlite.status)
        # a missing item reads the same on both stores: nulls and status "missing"
        both = [OnlineFeatureClient(repo, kind, project=project).get_features(user, [424242]) for kind in ("sqlite", "redis")]
        for f in both:
            assert f.status.iloc[0][["item_content", "item_text_embedding", "item_image_embedding"]].tolist() == ["missing"] * 3
            assert f.frame.text_embedding.iat[0] is None and np.isnan(f.frame.popularity.iat[0])
            assert f.status.iloc[0].user_profile == "found"
        pd.testing.assert_frame_equal(both[0].status, both[1].status)
        # rerunning materialize writes nothing twice: same values, same number of keys
        import redis as redis_lib

        r = redis_lib.Redis(host="127.0.0.1", port=6379, db=15)

        def project_keys():  # Feast's Redis keys end with the project name
            return sorted(r.scan_iter(match=b"*" + project.encode(), count=1000))

        keys_before = project_keys()
        assert len(keys_before) == facts["n_items"] + facts["n_users"]  # one hash per entity
        online.load(fs, repo / "data" / "tables")
        assert project_keys() == keys_before
        _check_online_equals_tables(client, repo, user, items[:-1])
    finally:
        drop_online(fs)


def test_feast_cli_apply_and_materialize(small_run, tmp_path):
    """`feast apply` / `feast materialize` work from the repository folder as Feast users expect."""
    src, _, _ = small_run
    repo = make_repo(tmp_path / "feature_repo")
    shutil.copytree(src / "data" / "tables", repo / "data" / "tables")
    feast = str(Path(sys.executable).parent / "feast")
    env = dict(os.environ)   # no PYTHONWARNINGS: the output must be clean as a user sees it
    noise = ("serve_features_while_materializing", "experimental", "DeprecationWarning", "Warning:")
    out = subprocess.run([feast, "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ranking_v1" in out.stdout
    out = subprocess.run([feast, "materialize", "1970-01-02T00:00:00", "2100-01-01T00:00:00"], cwd=repo,
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not [w for w in noise if w in out.stdout + out.stderr], out.stdout + out.stderr
    # applying the same definitions after a load changes nothing and says so (recfeast.feast_compat)
    out = subprocess.run([feast, "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "No changes to registry" in out.stdout and "Updated" not in out.stdout, out.stdout
    assert not [w for w in noise if w in out.stdout + out.stderr], out.stdout + out.stderr
    fv = store.feature_store(repo, "sqlite").get_feature_view("item_text_embedding")
    assert len(fv.materialization_intervals) == 1   # the load is still on record
    client = OnlineFeatureClient(repo, "sqlite")
    assert client.store.project == "recfeast"
    items = pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet").item_id.tolist()[:5]
    user = int(pd.read_parquet(repo / "data" / "tables" / "user_profile.parquet").user_id.iat[0])
    _check_online_equals_tables(client, repo, user, items)


def test_parts_rebuild_only_their_tables_and_keep_image_quarantine(small_run, small_data, tmp_path):
    """The scheduler's embeddings and aggregates jobs: each part rewrites only its own tables, and
    the aggregates part keeps the image quarantine records the embeddings part made."""
    src, _, project = small_run
    repo = make_repo(tmp_path / "repo")
    shutil.copytree(src / "data" / "tables", repo / "data" / "tables")
    tables = repo / "data" / "tables"
    before = {name: (tables / f"{name}.parquet").stat().st_mtime_ns for name in TABLES}
    summary = run(JobConfig(data_dir=small_data[0], repo=repo, project=project, apply=False, progress=False,
                            parts=("aggregates",)))
    after = {name: (tables / f"{name}.parquet").stat().st_mtime_ns for name in TABLES}
    changed = sorted(n for n in TABLES if after[n] != before[n])
    assert changed == sorted(["item_content", "user_profile", "user_behavior", "user_sequence_embedding",
                              "user_realtime"])
    assert "encode images" not in summary.seconds
    assert all(summary.tables[n]["new_or_changed"] == 0 for n in changed)   # same input, same rows
    q = pd.read_parquet(tables / "quarantine.parquet")
    assert sorted(q[q.rule == "image_corrupt"].entity_key) == ["9001", "9002"]
    with pytest.raises(Exception, match="parts"):
        run(JobConfig(data_dir=small_data[0], repo=repo, parts=("nightly",), progress=False))
