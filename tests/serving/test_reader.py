"""The SDK's direct reads give Feast's own answer on both stores, in one round trip, with one rule
for missing and stale rows."""

import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

from recfeast.errors import FeatureLookupError
from recfeast.serving.sdk import OnlineFeatureClient
from tests.conftest import drop_online, latest_rows, make_repo, unique_project

pytestmark = pytest.mark.slow

TS = 893_300_000  # just after MovieLens-100k's last rating


def _feast_answer(client, user, items):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return client.store.get_online_features(features=client.service, entity_rows=[
            {"user_id": user, "item_id": i, "request_ts": TS} for i in items]).to_dict()


def _assert_same_as_feast(feats, feast):
    frame = feats.frame
    for col in ["user_id", "item_id", *feats.kinds]:
        for n, (got, want) in enumerate(zip(frame[col], feast[col])):
            where = f"{col}[{n}]"
            if want is None or (isinstance(want, float) and np.isnan(want)):
                assert got is None or got is pd.NA or (isinstance(got, float) and np.isnan(got)), where
            elif isinstance(want, list):
                np.testing.assert_array_equal(got, np.asarray(want, np.float32), err_msg=where)
                assert got.dtype == np.float32
            elif col == "user_item_cosine":  # float64 sum order differs: same to the last few ulps
                assert got == pytest.approx(want, rel=1e-12, abs=1e-15), where
            else:
                assert got == want, where


def test_sdk_equals_feast_on_both_stores(small_run, redis_small, small_data):
    repo, _, project = small_run
    facts = small_data[1]
    user = facts["user_ids"][2]
    # real items, an item without image (9001: garbage poster), an unknown item, a repeat
    items = facts["item_ids"][:20] + [9001, 424242, facts["item_ids"][0]]
    answers = {}
    for kind in ("sqlite", "redis"):
        client = OnlineFeatureClient(repo, kind, project=project)
        feats = client.get_features(user, items, TS)
        _assert_same_as_feast(feats, _feast_answer(client, user, items))
        answers[kind] = feats
        assert list(feats.frame.columns) == ["user_id", "item_id", *client.feature_names]
        assert feats.arrays["text_embedding"].shape == (len(items), 384)
        assert feats.arrays["text_embedding"].dtype == np.float32
        assert np.isnan(feats.arrays["text_embedding"][21]).all()  # the unknown item
        assert feats.status.iloc[21][["item_content", "item_text_embedding", "item_image_embedding"]].tolist() \
            == ["missing"] * 3
        assert feats.status.item_image_embedding.iat[20] == "missing"  # garbage poster: no embedding
        assert (feats.status.user_profile == "found").all()
    pd.testing.assert_frame_equal(answers["sqlite"].status, answers["redis"].status)
    pd.testing.assert_frame_equal(answers["sqlite"].frame, answers["redis"].frame)
    # the values are the tables' latest rows
    text = latest_rows(pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet"), "item_id")
    for item, vec in zip(items[:20], answers["redis"].arrays["text_embedding"][:20]):
        np.testing.assert_array_equal(vec, text.loc[item, "text_embedding"])


def test_one_round_trip_per_lookup(small_run, redis_small, small_data, redis_round_trips):
    repo, _, project = small_run
    items = small_data[1]["item_ids"][:30]
    user = small_data[1]["user_ids"][0]
    client = OnlineFeatureClient(repo, "redis", project=project)
    client.get_features(user, items, TS)        # a first read (the pool connects, the health check runs)
    redis_round_trips.clear()
    feats = client.get_features(user, items + items[:5], TS)
    # one write, then its replies: one HMGET for the user, one per distinct item
    assert len(redis_round_trips) == 1
    cmds = redis_round_trips[0]
    assert [c[0] for c in cmds] == [b"HMGET"] * (1 + 30) and len({c[1] for c in cmds}) == 31
    assert len(feats) == 35

    sq = OnlineFeatureClient(repo, "sqlite", project=project)
    statements = []
    sq.reader._conn().set_trace_callback(statements.append)
    sq.get_features(user, items, TS)
    assert len(statements) == 1 and statements[0].count("UNION ALL") == len(sq.views) - 1


def test_a_redis_error_mid_reply_drops_the_connection(small_run, redis_small, small_data):
    """An error reply among the HMGET replies (a key of another type under an item's name) is a
    StoreError, and the next read gets whole answers: the unread replies went with the connection."""
    from recfeast.errors import StoreError
    from recfeast.layout import entity_key_bytes

    repo, _, project = small_run
    user, items = small_data[1]["user_ids"][0], small_data[1]["item_ids"][:5]
    client = OnlineFeatureClient(repo, "redis", project=project)
    want = client.get_features(user, items, TS)
    bad = entity_key_bytes("item_id", 987654321) + project.encode()
    client.reader.client.set(bad, b"not a hash")
    try:
        with pytest.raises(StoreError, match="WRONGTYPE"):
            client.get_features(user, [items[0], 987654321, *items[1:]], TS)
        again = client.get_features(user, items, TS)
    finally:
        client.reader.client.delete(bad)
    for col, arr in want.arrays.items():
        np.testing.assert_array_equal(again.arrays[col], arr, err_msg=col)


def test_anonymous_and_bad_requests(small_run, small_data):
    repo, _, project = small_run
    client = OnlineFeatureClient(repo, "sqlite", project=project, max_items=50)
    items = small_data[1]["item_ids"][:3]
    feats = client.get_features(None, items, TS)
    assert (feats.status.user_profile == "missing").all() and (feats.status.item_text_embedding == "found").all()
    assert feats.frame.user_id.isna().all() and np.isnan(feats.arrays["user_item_cosine"]).all()
    assert feats.to_json()["user_id"] is None
    with pytest.raises(FeatureLookupError, match="51 item ids: at most 50"):
        client.get_features(1, list(range(51)))


def test_rows_older_than_the_ttl_are_stale_on_both_stores(small_run, tmp_path):
    """With a one-day ttl, a row is served until a day after its event time, then nulled as stale."""
    from recfeast import store
    from recfeast.materialize import online

    src, _, _ = small_run
    repo = make_repo(tmp_path / "repo")
    defs = repo / "feature_definitions.py"
    defs.write_text(defs.read_text().replace("NO_TTL = timedelta(0)", "NO_TTL = timedelta(days=1)"))
    shutil.copytree(src / "data" / "tables", repo / "data" / "tables")
    project = unique_project()
    beh = latest_rows(pd.read_parquet(repo / "data" / "tables" / "user_behavior.parquet"), "user_id")
    user = int(beh.index[0])
    user_ts = int(beh.iloc[0].event_timestamp.timestamp())
    items = pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet").item_id.tolist()[:4]
    stores = {}
    for kind in ("sqlite", "redis"):
        fs = store.feature_store(repo, kind, project)
        store.apply(fs)
        online.load(fs, repo / "data" / "tables", quiet=True)
        stores[kind] = fs
    try:
        out = {}
        for kind in stores:
            client = OnlineFeatureClient(repo, kind, project=project)
            assert {v.name: v.ttl_s for v in client.views}["user_behavior"] == 86400
            fresh = client.get_features(user, items, user_ts + 3600)
            stale = client.get_features(user, items, user_ts + 86400 + 3600)
            assert (fresh.status.user_behavior == "found").all()
            assert fresh.arrays["rating_count_total"][0] == beh.iloc[0].rating_count_total
            assert (stale.status.user_behavior == "stale").all()
            assert np.isnan(stale.arrays["rating_count_total"]).all() and stale.frame.genre_share.isna().all()
            assert np.isnan(stale.arrays["days_since_last_event"]).all()  # built from a stale value
            out[kind] = (fresh, stale)
        for a, b in zip(out["sqlite"], out["redis"]):
            pd.testing.assert_frame_equal(a.status, b.status)
            pd.testing.assert_frame_equal(a.frame, b.frame)
    finally:
        drop_online(stores["redis"])
