"""recommend and search on the slice: retrieval -> online features -> the trained model, with the
versions they used, on both stores."""

import hashlib
import json

import numpy as np
import pytest

from recfeast.errors import FeatureLookupError, ModelError
from recfeast.ranking.checkpoint import manifest_path
from recfeast.serving.ranker import Ranker
from recfeast.serving.service import RecommendService, ServiceConfig, UnknownUserError

pytestmark = pytest.mark.slow

TS = 893_300_000


@pytest.fixture(scope="module")
def services(small_run, redis_small, small_model, text_encoder):
    repo, _, project = small_run
    out = {}
    for kind in ("sqlite", "redis"):
        cfg = ServiceConfig(checkpoint=small_model, repo=repo, online_store=kind, project=project, as_of=TS,
                            candidates=20, popular=5, refresh_every_s=0)
        out[kind] = RecommendService.from_config(cfg, encoder=text_encoder)
    return out


def test_recommend_ranks_with_the_model_and_names_versions(services, small_data, small_model):
    user = small_data[1]["user_ids"][0]
    answers = {kind: svc.recommend(user, k=8) for kind, svc in services.items()}
    assert answers["sqlite"]["items"] == answers["redis"]["items"]
    svc = services["redis"]
    res = answers["redis"]
    items = res["items"]
    assert len(items) == 8 and [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    # the scores are the model's on the online features of exactly these items
    feats = svc.client.get_features(user, [i["item_id"] for i in items], TS)
    np.testing.assert_allclose([i["model_score"] for i in items], svc.ranker.score(feats), rtol=1e-6)
    # retrieval: the nearest items to the user's sequence embedding, cosines as the index gives them
    seq = feats.arrays["sequence_embedding"][0]
    near, sims = svc.index.search(seq, 20)
    retrieved = {i["item_id"]: i["retrieval_score"] for i in items if i["retrieval_score"] is not None}
    assert retrieved and all(i in near for i in retrieved)
    for item, s in retrieved.items():
        assert s == pytest.approx(float(sims[list(near).index(item)]))
    v = res["versions"]
    ckpt = json.loads(manifest_path(small_model).read_text())
    assert v["embedding_models"]["text_model"] == ckpt["embedding_models"]["text_model"]
    assert v["index"]["model_id"] == ckpt["embedding_models"]["text_model"][0] == v["query_encoder"]
    assert v["ranker"]["sha256"] == hashlib.sha256(small_model.read_bytes()).hexdigest()[:12]
    assert v["feature_service"] == "ranking_v1" and v["request_ts"] == TS and v["online_store"] == "redis"
    assert res["candidates"] <= 20 + 5


def test_search_finds_the_query_and_personalises(services, small_data):
    svc = services["sqlite"]
    svc.cfg.query_weight = 1.0  # relevance only: the order is the query cosine's
    try:
        res = svc.search("Star Wars: a farm boy joins the rebels against the galactic empire", k=3)
    finally:
        svc.cfg.query_weight = 0.5
    ids = [i["item_id"] for i in res["items"]]
    assert 50 in ids and res["user_id"] is None
    assert [i["query_cosine"] for i in res["items"]] == sorted((i["query_cosine"] for i in res["items"]), reverse=True)
    for it in res["items"]:
        assert it["query_cosine"] == pytest.approx(it["retrieval_score"], abs=1e-5)
    user = small_data[1]["user_ids"][0]
    again = svc.search("Star Wars: a farm boy joins the rebels against the galactic empire", user_id=user, k=3)
    assert again["cache_hit"] is True and again["user_id"] == user
    for it in again["items"]:
        assert it["score"] == pytest.approx(0.5 * it["query_cosine"] + 0.5 * it["model_score"])


def test_bad_requests(services):
    svc = services["sqlite"]
    with pytest.raises(UnknownUserError, match="user_id=987654"):
        svc.recommend(987654)
    with pytest.raises(UnknownUserError):
        svc.search("comedy", user_id=987654)
    for k in (0, 101, 2.5, True):
        with pytest.raises(FeatureLookupError, match="k="):
            svc.recommend(1, k=k)
    with pytest.raises(FeatureLookupError, match="empty"):
        svc.search("  ")


def test_versions_must_agree(services, small_model, small_data, tmp_path):
    svc = services["sqlite"]
    # the same tensors with a manifest naming another text encoder (the manifest is the record of truth)
    meta = json.loads(manifest_path(small_model).read_text())
    meta["embedding_models"] = {**meta["embedding_models"], "text_model": ["minilm@sha256:0000000000ff"]}
    path = tmp_path / "ranking_model.pt"
    path.write_bytes(small_model.read_bytes())
    manifest_path(path).write_text(json.dumps(meta))
    ranker = Ranker(path)
    # an index of one model and a ranker trained on another cannot serve together
    with pytest.raises(ModelError, match="retrain the ranking model"):
        RecommendService(svc.client, svc.index, ranker, None, svc.cfg)
    # and a request whose items carry embeddings the ranker never saw is refused, naming them
    feats = svc.client.get_features(small_data[1]["user_ids"][0], small_data[1]["item_ids"][:3], TS)
    with pytest.raises(ModelError, match=r"text_embedding of items \["):
        ranker.score(feats)
    with pytest.raises(ModelError, match="no ranking model checkpoint"):
        Ranker(tmp_path / "nope.pt")


def test_recommend_leaves_out_items_the_online_store_saw_the_user_take(small_run, small_model, small_data, tmp_path):
    """After events through the ingest path, the pushed user_realtime view lists the items and
    recommend leaves them out (on a copy of the slice's repository)."""
    import shutil

    from recfeast.cli import _service_ingestor

    src, _, project = small_run
    repo = tmp_path / "repo"
    shutil.copytree(src, repo)
    svc = RecommendService.from_config(ServiceConfig(checkpoint=small_model, repo=repo, project=project, as_of=TS,
                                                     candidates=20, popular=5, refresh_every_s=0,
                                                     load_query_encoder=False))
    user = small_data[1]["user_ids"][0]
    before = svc.recommend(user, k=8)
    taken = [i["item_id"] for i in before["items"][:3]]
    result = _service_ingestor(svc).ingest([{"user_id": user, "item_id": i, "action": "click",
                                             "event_timestamp": TS + n} for n, i in enumerate(taken)])
    assert result.accepted == 3
    assert set(taken) <= set(svc.client.recent_items(user))
    after = svc.recommend(user, k=8)
    assert not set(taken) & {i["item_id"] for i in after["items"]}
    assert after["excluded"] == len(svc.client.recent_items(user)) >= 3
    assert svc.client.read_user(user, TS).recent_items == svc.client.recent_items(user)
    ref = svc.recommend_reference(user, k=8)
    assert [i["item_id"] for i in after["items"]] == [i["item_id"] for i in ref["items"]]
    assert ref["excluded"] == after["excluded"]

    # a catalog where repeats are wanted says so in its spec: nothing is left out
    spec = repo / "catalog.yaml"
    spec.write_text(spec.read_text() + "\nserving: {exclude_interacted: false}\n")
    keep = RecommendService.from_config(ServiceConfig(checkpoint=small_model, repo=repo, project=project, as_of=TS,
                                                      candidates=20, popular=5, refresh_every_s=0,
                                                      load_query_encoder=False))
    assert keep.exclude_interacted is False and svc.exclude_interacted is True
    again = keep.recommend(user, k=25)
    assert again["excluded"] == 0 and len(again["items"]) == again["candidates"]
    assert set(taken) & {i["item_id"] for i in again["items"]}
    assert keep.recommend_reference(user, k=25)["excluded"] == 0


def test_columnar_path_answers_as_the_reference_path(services, small_data):
    """recommend (one or two round trips, columnar ranker) == recommend_reference (three round trips, the
    DataFrame ranker) on both stores: the same items, scores within 1e-5, the same versions."""
    for kind, svc in services.items():
        for user in small_data[1]["user_ids"][:8]:
            fast, ref = svc.recommend(user, k=10), svc.recommend_reference(user, k=10)
            assert [i["item_id"] for i in fast["items"]] == [i["item_id"] for i in ref["items"]], kind
            np.testing.assert_allclose([i["model_score"] for i in fast["items"]],
                                       [i["model_score"] for i in ref["items"]], rtol=0, atol=1e-5)
            assert [i["retrieval_score"] for i in fast["items"]] == [i["retrieval_score"] for i in ref["items"]]
            assert {k: fast[k] for k in ("candidates", "excluded", "versions")} == \
                   {k: ref[k] for k in ("candidates", "excluded", "versions")}
        # the user's features read once and reused equal a read of the user with the items
        user = small_data[1]["user_ids"][1]
        items = small_data[1]["item_ids"][:25]
        once = svc.client.get_item_features(svc.client.read_user(user, TS), items)
        both = svc.client.get_features(user, items, TS)
        for col, arr in both.arrays.items():
            np.testing.assert_array_equal(once.arrays[col], arr, err_msg=f"{kind} {col}")
        assert once.status.equals(both.status)
        np.testing.assert_allclose(svc.ranker.score(once), svc.ranker.score_frame(both), rtol=0, atol=1e-5)


def test_recommend_reads_the_user_once(services, small_data, redis_round_trips, small_run, small_model):
    """With the item cache warm, one round trip: Redis one write of the user's HMGET (every user view
    and the recent items) and the load sentinel's GET; SQLite one statement. Without the cache, a
    second round trip reads the candidates (one HMGET each; one statement), never the user again."""
    from recfeast import health

    svc = services["redis"]
    user = small_data[1]["user_ids"][0]
    svc.recommend(user, k=5)
    redis_round_trips.clear()
    svc.recommend(user, k=5)
    assert len(redis_round_trips) == 1
    (first,) = redis_round_trips
    assert [c[0] for c in first] == [b"HMGET", b"GET"]
    assert first[1][1] == health.redis_key(svc.client.store.project)
    history = svc.client._history_view
    user_fields = {f for v in svc.client.views if v.join_key == "user_id" for f in (*v.fields, v.ts_field)}
    assert set(first[0][2:]) == user_fields | ({*history.fields, history.ts_field} if history else set())

    repo, _, project = small_run
    uncached = RecommendService.from_config(ServiceConfig(
        checkpoint=small_model, repo=repo, online_store="redis", project=project, as_of=TS, candidates=20,
        popular=5, refresh_every_s=0, load_query_encoder=False, item_cache=0))
    uncached.recommend(user, k=5)    # connects
    redis_round_trips.clear()
    res = uncached.recommend(user, k=5)
    assert len(redis_round_trips) == 2
    second = redis_round_trips[1]
    assert len(second) == res["candidates"] == len({c[1] for c in second})
    assert first[0][1] not in {c[1] for c in second}       # the user is not read again

    sq = services["sqlite"]
    sq.recommend(user, k=5)
    statements = []
    conn = sq.client.reader._conn()
    conn.set_trace_callback(statements.append)
    try:
        sq.recommend(user, k=5)
    finally:
        conn.set_trace_callback(None)
    user_tables = {v.table for v in sq.client.views if v.join_key == "user_id"}
    assert len(statements) == 1
    assert all(f'"{t}"' in statements[0] for t in user_tables) and health.SQLITE_TABLE in statements[0]


def test_item_cache_follows_the_load_sentinel(services, small_data, redis_round_trips):
    """Cached item rows equal fresh reads; a new load sentinel (what every online load writes last)
    makes the next request read its candidates again, on both stores."""
    from recfeast import health

    user, items = small_data[1]["user_ids"][2], small_data[1]["item_ids"][:30]
    for kind, svc in services.items():
        client = svc.client
        fresh = client.get_features(user, items, TS)
        u = client.read_user(user, TS)
        client.get_item_features(u, items)
        misses = client.item_cache.misses
        cached = client.get_item_features(client.read_user(user, TS), items)
        assert client.item_cache.misses == misses                      # all hits
        for col, arr in fresh.arrays.items():
            np.testing.assert_array_equal(cached.arrays[col], arr, err_msg=f"{kind} {col}")
        assert cached.status.equals(fresh.status)
        before = client.reader.sentinel()
        assert before is not None
        try:
            health.write_sentinel(client.store, {**before, "loaded_at_s": before["loaded_at_s"] + 1})
            u = client.read_user(user, TS)
            assert u.load_stamp is not None
            again = client.get_item_features(u, items)
            assert client.item_cache.misses == misses + len(set(items))   # read again after the load
            for col, arr in fresh.arrays.items():
                np.testing.assert_array_equal(again.arrays[col], arr, err_msg=f"{kind} {col}")
        finally:
            health.write_sentinel(client.store, before)


def test_concurrent_recommends_answer_as_sequential_ones(services, small_data):
    from concurrent.futures import ThreadPoolExecutor

    svc = services["sqlite"]
    users = small_data[1]["user_ids"][:12]
    want = {u: svc.recommend(u, k=10) for u in users}
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda u: (u, svc.recommend(u, k=10)), users * 4))
    for u, res in got:
        assert res["items"] == want[u]["items"]


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_item_cache_after_a_reload_and_after_a_failed_one(small_run, small_data, tmp_path, monkeypatch, kind):
    """On a copy of the slice (a project of its own): a load that changes the items' values and the
    width of a vector is seen by the next request; so is a load that fails after writing the items,
    before its sentinel (it marks the old one), where the cache used to serve the values it read
    before the load until its age limit."""
    import shutil

    import pandas as pd

    from recfeast import health, store
    from recfeast.materialize import online
    from recfeast.serving.sdk import OnlineFeatureClient
    from tests.conftest import drop_online, unique_project

    repo = tmp_path / "repo"
    shutil.copytree(small_run[0], repo)
    project, tables = unique_project(), repo / "data" / "tables"
    fs = store.feature_store(repo, kind, project)
    store.apply(fs)
    try:
        online.load(fs, tables, quiet=True)
        cached = OnlineFeatureClient(repo, kind, project=project, item_cache=1000)
        plain = OnlineFeatureClient(repo, kind, project=project)
        user, items = small_data[1]["user_ids"][2], small_data[1]["item_ids"][:30] + [424242, 1, 1]

        def check(msg):
            got = cached.get_item_features(cached.read_user(user, TS), items)
            want = plain.get_features(user, items, TS)
            for col, arr in want.arrays.items():
                np.testing.assert_array_equal(got.arrays[col], arr, err_msg=f"{msg} {col}")
            assert got.status.equals(want.status)
            return got

        first = check("first")
        table = tables / "item_content.parquet"
        t = pd.read_parquet(table)
        t["runtime"] += 100
        t["genre_flags"] = t["genre_flags"].map(lambda v: [*v, 7.0])   # a vector one wider
        t.to_parquet(table, index=False)
        online.load(fs, tables, quiet=True)
        after = check("after a load")
        assert after.arrays["genre_flags"].shape[1] == first.arrays["genre_flags"].shape[1] + 1
        np.testing.assert_allclose(np.nanmax(after.arrays["runtime"] - first.arrays["runtime"]), 100, atol=1e-3)

        t["runtime"] += 100
        t.to_parquet(table, index=False)
        before = cached.reader.sentinel()

        def fails(*args, **kwargs):
            raise RuntimeError("pushing the real-time state failed")

        monkeypatch.setattr(online, "restore_realtime", fails)   # the last step before the sentinel
        with pytest.raises(RuntimeError, match="real-time state"):
            online.load(fs, tables, quiet=True)
        mark = cached.reader.sentinel()
        assert mark["interrupted_at_s"] and {k: v for k, v in mark.items() if k != "interrupted_at_s"} == before
        failed = check("after a failed load")
        np.testing.assert_allclose(np.nanmax(failed.arrays["runtime"] - after.arrays["runtime"]), 100, atol=1e-3)
    finally:
        if kind == "redis":
            drop_online(fs)
            fs._get_provider().online_store._get_client(fs.config.online_store).delete(health.redis_key(project))
