"""String entity keys (an e-commerce shape: 64-hex customers, zero-padded article codes) end to end
through the SDK: Feast's own answer value by value on SQLite and Redis, type checks, the item index
and the API's request models. The catalog is built here, small, from plain files and a spec."""

import numpy as np
import pandas as pd
import pytest

from recfeast.errors import FeatureLookupError
from tests.conftest import drop_online, make_repo, unique_project, write_spec

TS = 1_600_300_000  # a few days after the catalog's last event

#: zero-padded codes (must stay strings: "0706016001" is not 706016001), a unicode one, a dash
ITEMS = ["0706016001", "0706016002", "0372860001", "sku-b", "sku-ø7", "0610776002", "0759871002", "0000000009"]
USERS = ["00000dbacae5abe5e23885899a1fa44253a17956c6d1c3d25f88aa139fdfc657",
         "0000423b00ade91418cceaf3b26c6af3dd342b51fd051eec9c12fb36984420fa",
         "000058a12d5b43e67d225668fa1f8d618c13dc232df0cad8ffe7ad4a1091e318",
         "kunde-æøå", "u5"]


def _spec():
    from recfeast.spec import parse_spec

    return parse_spec({
        "name": "tiny-shop",
        "user": {"key": "customer_id", "dtype": "string"},
        "item": {"key": "article_id", "dtype": "string"},
        "items": {"source": {"path": "articles.csv"}, "title": "name",
                  "text": {"fields": ["name", "colour", "tags"]}, "image": None,
                  "categorical": [{"field": "colour"}, {"field": "tags", "multi": True, "feature": "tag"}],
                  "numeric": [{"field": "weight_g", "unit": "g"}]},
        "users": {"source": {"path": "customers.csv"}, "categorical": [{"field": "club"}],
                  "numeric": [{"field": "age", "valid": [14, 110]}]},
        "events": {"source": {"path": "events.csv"}, "type_field": "kind",
                   "timestamp": {"field": "t", "unit": "s"},
                   "types": {"purchase": {"kind": "purchase", "value": {"field": "price", "name": "price"},
                                          "positive": True},
                             "view": {"kind": "view", "value": {"field": "price", "required": False}}},
                   "duplicates": "none"},
        "features": {"windows_days": [7, 30], "sequence": {"length": 5, "encoder": "gru"}},
    })


def _write_data(root):
    rng = np.random.default_rng(7)
    colours = ["black", "white", "red", "blue"]
    pd.DataFrame({
        "article_id": ITEMS,
        "name": [f"Article {i} {w}" for i, w in enumerate(["tee", "hoodie", "jeans", "scarf", "boots", "dress",
                                                            "cap", "socks"])],
        "colour": [colours[i % 4] for i in range(len(ITEMS))],
        "tags": ["basic|cotton", "warm", "denim|basic", "wool|warm", "leather", "summer", "", "cotton"],
        "weight_g": [180, 450, 600, 120, 900, 250, 80, 60],
    }).to_csv(root / "articles.csv", index=False)
    pd.DataFrame({"customer_id": USERS, "club": ["ACTIVE", "ACTIVE", "PRE-CREATE", "ACTIVE", None],
                  "age": [24, 51, 33, 19, 70]}).to_csv(root / "customers.csv", index=False)
    rows = []
    t0 = TS - 40 * 86400
    for u in USERS[:4]:   # USERS[4] has a profile and no events
        for n in range(12):
            rows.append({"customer_id": u, "article_id": ITEMS[int(rng.integers(len(ITEMS) - 1))],
                         "kind": "purchase" if n % 2 else "view", "price": round(float(rng.uniform(5, 60)), 2),
                         "t": t0 + int(rng.integers(0, 38 * 86400))})
    rows.append({"customer_id": USERS[3], "article_id": ITEMS[0], "kind": "view", "price": None, "t": TS - 86400})
    pd.DataFrame(rows).to_csv(root / "events.csv", index=False)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The tiny catalog's tables in SQLite and Redis under one project; (repo, project)."""
    from recfeast import store
    from recfeast.materialize import online
    from recfeast.materialize.job import JobConfig, run

    data = tmp_path_factory.mktemp("shop_data")
    _write_data(data)
    repo = make_repo(tmp_path_factory.mktemp("shop_repo"))
    write_spec(_spec(), repo)
    project = unique_project()
    run(JobConfig(data_dir=data, repo=repo, online_store="sqlite", project=project, progress=False))
    fs = store.feature_store(repo, "redis", project)
    store.apply(fs)
    online.load(fs, repo / "data" / "tables", quiet=True)
    yield repo, project, data
    drop_online(fs)


@pytest.fixture(scope="module")
def shop_services(shop, tmp_path_factory, text_encoder):
    """A ranking model trained on the tiny catalog in seconds, served from SQLite and Redis."""
    import os
    from unittest import mock

    from recfeast.serving.service import RecommendService, ServiceConfig
    from recfeast.training import TrainConfig, train

    repo, project, data = shop
    out = tmp_path_factory.mktemp("shop_model")
    with mock.patch.dict(os.environ, {"RECFEAST_PROJECT": project}):
        train(TrainConfig(repo=str(repo), data_dir=str(data), out_dir=str(out), max_epochs=2, eval_max_users=4,
                          eval_negatives=3, ablation=False), log=lambda *a: None)
    return {kind: RecommendService.from_config(ServiceConfig(
        checkpoint=out / "ranking_model.pt", repo=repo, online_store=kind, project=project, as_of=TS, candidates=5,
        popular=3, refresh_every_s=0), encoder=text_encoder) for kind in ("sqlite", "redis")}


@pytest.mark.slow
def test_string_keys_equal_feast_on_both_stores(shop):
    from recfeast.serving.sdk import OnlineFeatureClient
    from tests.serving.test_reader import _assert_same_as_feast

    repo, project, _ = shop
    items = ITEMS + ["no-such-article", ITEMS[0]]
    answers = {}
    for kind in ("sqlite", "redis"):
        client = OnlineFeatureClient(repo, kind, project=project)
        assert client.key_types == {"user_id": "string", "item_id": "string"}
        assert set(client.vectorised) == {"user_item_similarity", "user_recency"}   # numpy, not Feast's udf
        # the spec's names: recency of the primary type (purchase), shares of both categoricals
        assert {"days_since_last_event", "user_item_cosine", "purchase_count", "popularity", "colour_flags",
                "tag_share", "last_purchase_ts", "avg_price_total"} <= set(client.feature_names)
        for user in (USERS[0], USERS[3], USERS[4]):
            feats = client.get_features(user, items, TS)
            want = client.store.get_online_features(features=client.service, entity_rows=[
                {"user_id": user, "item_id": i, "request_ts": TS} for i in items]).to_dict()
            _assert_same_as_feast(feats, want)
            answers[kind, user] = feats
        feats = answers[kind, USERS[0]]
        assert feats.frame.item_id.tolist() == items and feats.frame.user_id.tolist() == [USERS[0]] * len(items)
        assert feats.arrays["text_embedding"].shape == (len(items), 384)
        assert (feats.status.item_content.iloc[:len(ITEMS)] == "found").all()
        assert feats.status.item_content.iat[len(ITEMS)] == "missing"      # unknown article
        assert not np.isnan(feats.arrays["days_since_last_event"]).any()
        assert not np.isnan(feats.arrays["user_item_cosine"][:len(ITEMS)]).any()
        # a user with a profile and no events: profile found, behaviour missing, recency null
        lone = answers[kind, USERS[4]]
        assert (lone.status.user_profile == "found").all() and (lone.status.user_behavior == "missing").all()
        assert np.isnan(lone.arrays["days_since_last_event"]).all()
        js = feats.to_json(vectors=False)
        assert js["user_id"] == USERS[0] and [it["item_id"] for it in js["items"]] == items
        anon = client.get_features(None, ITEMS[:2], TS)
        assert anon.to_json()["user_id"] is None and (anon.status.user_behavior == "missing").all()
    for key in answers:
        if key[0] == "sqlite":
            pd.testing.assert_frame_equal(answers[key].frame, answers["redis", key[1]].frame)
            pd.testing.assert_frame_equal(answers[key].status, answers["redis", key[1]].status)
    # the values are the tables' latest rows, keyed by the string ids as written
    beh = pd.read_parquet(repo / "data" / "tables" / "user_behavior.parquet")
    last = beh[beh.user_id == USERS[0]].sort_values("event_timestamp").iloc[-1]
    assert answers["redis", USERS[0]].arrays["purchase_count_total"][0] == last.purchase_count_total


@pytest.mark.slow
def test_key_types_are_checked(shop):
    from recfeast.serving.sdk import OnlineFeatureClient

    repo, project, _ = shop
    client = OnlineFeatureClient(repo, "sqlite", project=project)
    for args, msg in [((7, ITEMS[:1]), r"user_id=7: expected a string"),
                      ((USERS[0], [706016001]), r"item_ids\[0\]=706016001: expected a string"),
                      ((USERS[0], [ITEMS[0], ""]), r"item_ids\[1\]='': expected a non-empty string"),
                      ((USERS[0], ITEMS[0]), "item_ids must be a list of strings")]:
        with pytest.raises(FeatureLookupError, match=msg):
            client.get_features(*args)
    assert client.parse_key("0706016001", "item_ids[0]") == "0706016001"   # kept as given, zeros and all


@pytest.mark.slow
def test_item_index_answers_with_string_ids(shop):
    from recfeast.serving.index import ItemIndex, latest_item_rows

    repo, _, _ = shop
    path = repo / "data" / "tables" / "item_text_embedding.parquet"
    ix = ItemIndex(path)
    rows = latest_item_rows(path, ["text_embedding"])
    m = np.stack(rows.text_embedding.to_numpy())
    for n in range(len(rows)):
        ids, sims = ix.search(m[n], 3)
        exact = np.argsort(-(m @ m[n]), kind="stable")[:3]
        assert ids.dtype == object and ids.tolist() == rows.item_id.to_numpy()[exact].tolist()
        np.testing.assert_allclose(sims, (m @ m[n])[exact], atol=1e-5)
    ids, _ = ix.search(m[0], 3, exclude=[rows.item_id.iat[0]])
    assert rows.item_id.iat[0] not in ids.tolist() and len(ids) == 3


def test_api_models_follow_the_key_types():
    from pydantic import ValidationError

    from recfeast.serving.api import _models
    from recfeast.serving.security import ApiSettings

    settings = ApiSettings()
    Features, Recommend, Search, _ = _models(settings, {"user_id": "string", "item_id": "string"})
    assert Features(user_id="u-1", item_ids=["0706016001"]).item_ids == ["0706016001"]
    for bad in ({"user_id": 7, "item_ids": ["a"]}, {"user_id": "u", "item_ids": [1]},
                {"user_id": "", "item_ids": ["a"]}):
        with pytest.raises(ValidationError):
            Features(**bad)
    assert Search(query="x", user_id="u-1").user_id == "u-1"
    Features, Recommend, _, _ = _models(settings, {"user_id": "int64", "item_id": "int64"})
    with pytest.raises(ValidationError, match="valid integer"):
        Recommend(user_id="7")


@pytest.mark.slow
def test_recommend_and_search_with_string_ids(shop_services):
    from fastapi.testclient import TestClient

    from recfeast.serving.api import create_app
    from recfeast.serving.service import UnknownUserError

    answers = {kind: svc.recommend(USERS[0], k=4) for kind, svc in shop_services.items()}
    assert answers["sqlite"]["items"] == answers["redis"]["items"]
    items = answers["redis"]["items"]
    assert len(items) == 4 and all(isinstance(i["item_id"], str) and i["item_id"] in ITEMS for i in items)
    assert answers["redis"]["user_id"] == USERS[0]
    svc = shop_services["sqlite"]
    # the scores are the model's on the online features of exactly these items
    feats = svc.client.get_features(USERS[0], [i["item_id"] for i in items], TS)
    np.testing.assert_allclose([i["model_score"] for i in items], svc.ranker.score(feats), rtol=1e-6)
    # a user with a profile and no events gets the popular items; an unknown one is refused
    lone = svc.recommend(USERS[4], k=3)
    assert all(i["retrieval_score"] is None for i in lone["items"]) and len(lone["items"]) == 3
    with pytest.raises(UnknownUserError, match="no such user"):
        svc.recommend("nobody")
    with pytest.raises(FeatureLookupError, match="expected a string"):
        svc.recommend(7)
    found = svc.search("warm wool scarf", user_id=USERS[1], k=3)
    assert found["user_id"] == USERS[1] and all(i["item_id"] in ITEMS for i in found["items"])
    from recfeast.serving.security import ApiSettings

    http = TestClient(create_app(svc, settings=ApiSettings(allow_anonymous=True, rate_per_s=0)),
                      raise_server_exceptions=False)   # local development mode: no key
    r = http.post("/recommend", json={"user_id": USERS[0], "k": 4})
    assert r.status_code == 200 and r.json()["items"] == items
    assert http.get("/recommend", params={"user_id": USERS[0], "k": 4}).json()["items"] == items
    bad = http.post("/recommend", json={"user_id": 7})
    assert bad.status_code == 422 and "user_id: Input should be a valid string" in bad.json()["error"]
    assert http.post("/recommend", json={"user_id": "nobody"}).status_code == 404
    r = http.post("/features", json={"user_id": USERS[0], "item_ids": ITEMS[:2], "vectors": False})
    assert r.status_code == 200 and [i["item_id"] for i in r.json()["items"]] == ITEMS[:2]
