"""Online rows follow the tables on both stores: corrections, deletions, entities without events,
and a crash between writing the tables and loading the online store."""

import numpy as np
import pandas as pd
import pytest

from recfeast import store
from recfeast.materialize import online
from recfeast.adapters.movielens import read
from recfeast.materialize.job import JobConfig, run
from recfeast.serving.sdk import OnlineFeatureClient
from tests.conftest import drop_online, latest_rows, make_repo, unique_project

pytestmark = pytest.mark.slow
ITEMS = [1, 2, 3, 50, 172, 181]


def _write(root, data_dir, items_override=None, drop_items=()):
    raw = read(data_dir)
    items = raw.items[raw.items.item_id.astype(int).isin(ITEMS)].drop(columns="source").copy()
    items["item_id"] = items.item_id.astype("int64")
    items["image_path"] = [None if p is None else str(data_dir / p) for p in items.image_path]
    extra = {**items.iloc[0].to_dict(), "item_id": 4, "title": "No Events (no date)", "release_date": pd.NaT,
             "image_path": None}
    items = pd.concat([items, pd.DataFrame([extra])], ignore_index=True)
    for item_id, desc in (items_override or {}).items():
        items.loc[items.item_id == item_id, "description"] = desc
    items = items[~items.item_id.isin(drop_items)]
    items.to_parquet(root / "items.parquet", index=False)
    ev = raw.events[raw.events.item_id.astype(int).isin(set(ITEMS) - set(drop_items))]
    ev = ev[ev.user_id.astype(int).isin([1, 2, 5, 13])].drop(columns="source")
    ev.to_csv(root / "events.csv", index=False)
    users = raw.users[raw.users.user_id.astype(int).isin([1, 2, 5, 13, 900])].drop(columns="source")
    users.to_csv(root / "users.csv", index=False)


def _text(repo, item):
    t = latest_rows(pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet"), "item_id")
    return t.loc[item, "text_embedding"] if item in t.index else None


def _check(repo, project, kind):
    client = OnlineFeatureClient(repo, kind, project=project)
    f = client.get_features(900, [1, 3, 4, 50, 172])
    got = dict(zip(f.frame.item_id, f.frame.text_embedding))
    for item in (1, 3, 4, 50, 172):
        want = _text(repo, item)
        if want is None:
            assert got[item] is None, (kind, item)
        else:
            np.testing.assert_array_equal(got[item], want, err_msg=f"{kind} item {item}")
    return f


def test_online_follows_tables_on_both_stores(tmp_path, data_dir):
    root, repo, project = tmp_path / "data", make_repo(tmp_path / "repo"), unique_project()
    root.mkdir()
    cfg = dict(data_dir=root, repo=repo, online_store="sqlite", project=project, progress=False)
    fs_redis = store.feature_store(repo, "redis", project)
    try:
        _write(root, data_dir)
        run(JobConfig(**cfg))
        store.apply(fs_redis)
        online.load(fs_redis, repo / "data" / "tables")
        for kind in ("sqlite", "redis"):
            f = _check(repo, project, kind)
            # a user and an item without events are online too (stamped 1970-01-01)
            assert f.status.user_profile.tolist() == ["found"] * 5
            assert f.status.item_text_embedding.tolist() == ["found"] * 5
        before = _text(repo, 50)

        # a corrected description (same event time, new value) and a deleted item
        _write(root, data_dir, {50: "A farm boy joins a rebellion against a galactic empire."}, drop_items=[3])
        run(JobConfig(**cfg))
        assert not np.array_equal(_text(repo, 50), before) and _text(repo, 3) is None
        online.load(fs_redis, repo / "data" / "tables")
        for kind in ("sqlite", "redis"):
            f = _check(repo, project, kind)
            assert f.status.item_text_embedding.tolist() == ["found", "missing", "found", "found", "found"]

        # crash after the tables were written, before any load: the next load still catches up
        _write(root, data_dir, {50: "Star Wars, again", 172: "The Empire strikes back."}, drop_items=[3])
        run(JobConfig(**{**cfg, "materialize": False}))
        assert online.load_pending(repo / "data" / "tables")["redis"]["item_text_embedding"] == [50, 172]
        online.load(fs_redis, repo / "data" / "tables")
        online.load(store.feature_store(repo, "sqlite", project), repo / "data" / "tables")
        assert online.load_pending(repo / "data" / "tables") == {}
        for kind in ("sqlite", "redis"):
            _check(repo, project, kind)
    finally:
        drop_online(fs_redis)


def test_reads_keep_working_while_a_view_is_materializing(small_run):
    """Feast 0.67 refuses reads of a view in MATERIALIZING state (during a load, and forever after a
    load that crashed) unless the registry allows them: feature_store.yaml does."""
    from feast.feature_view import FeatureViewState

    repo, _, project = small_run
    fs = store.feature_store(repo, "sqlite", project)
    assert fs.config.registry.serve_features_while_materializing is True
    fv = fs.get_feature_view("item_content")
    fv.state = FeatureViewState.MATERIALIZING  # what a load in progress (or killed) leaves behind
    fs.registry.apply_feature_view(fv, fs.project, commit=True)
    try:
        items = pd.read_parquet(repo / "data" / "tables" / "item_content.parquet").item_id.unique()[:3].tolist()
        f = OnlineFeatureClient(repo, "sqlite", project=project).get_features(1, items)
        assert f.status.item_content.tolist() == ["found"] * 3
    finally:
        fv.state = FeatureViewState.AVAILABLE_ONLINE
        fs.registry.apply_feature_view(fv, fs.project, commit=True)


def test_stale_entities_recorded_before_the_table_changes(tmp_path, monkeypatch):
    """A kill between recording and replacing loses nothing: the pending list is written first."""
    from recfeast import io

    ts = pd.Timestamp("1998-01-01", tz="UTC")
    old = pd.DataFrame({"item_id": [1, 2, 3], "event_timestamp": ts, "v": [1.0, 2.0, 3.0]})
    path = tmp_path / "t.parquet"
    io.write_feature_table(old, path, ["item_id", "event_timestamp"], ts)
    before = path.read_bytes()
    new = pd.DataFrame({"item_id": [1, 2], "event_timestamp": ts, "v": [1.0, 20.0]})  # 2 changed, 3 deleted

    def killed(*a, **k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(io.pq, "write_table", killed)  # dies while writing the new table
    with pytest.raises(KeyboardInterrupt):
        io.write_feature_table(new, path, ["item_id", "event_timestamp"], ts,
                               on_stale=lambda ids: online.add_pending(tmp_path, "t", ids))
    assert path.read_bytes() == before
    assert online.load_pending(tmp_path) == {"sqlite": {"t": [2, 3]}, "redis": {"t": [2, 3]}}
