"""Feast materialize rows/s into SQLite and Redis, and online lookup latency for 1 user + 100 items.

Needs the feature tables: run `recfeast materialize --data-dir ../shared/data/movielens-100k` first.
Materializes the repository's tables into each store (Redis at $REDIS_CONNECTION_STRING, default
127.0.0.1:6379, project "recfeast_bench" so a user's keys are not touched), then times:
- recfeast SDK ``OnlineFeatureClient.get_features`` (ranking_v1, typed arrays + statuses, one batched read);
- the anchor: Feast ``get_online_features(...).to_dict()`` with the same service and rows;
- the floor (Redis only): pipelined HGETALL of the same 101 keys with redis-py, no decoding.

Run: .venv/bin/python bench/bench_online.py [--repo feature_repo] [--n 200]
"""

import argparse
import time
import warnings

import numpy as np


def _raw_redis_keys(project, user_id, item_ids):
    from feast.infra.online_stores.helpers import _redis_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    def key(name, v):
        return _redis_key(project, EntityKey(join_keys=[name], entity_values=[Value(int64_val=v)]), 3)

    return [key("user_id", user_id)] + [key("item_id", i) for i in item_ids]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=None)
    ap.add_argument("--n", type=int, default=200, help="timed lookups per path")
    ap.add_argument("--items", type=int, default=100)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    import pandas as pd
    import redis

    from bench.common import percentiles_ms, save
    from recfeast import config
    from recfeast import store
    from recfeast.serving.sdk import OnlineFeatureClient

    repo = config.repo_path(args.repo)
    tables = config.tables_dir(repo)
    offline_rows = sum(len(pd.read_parquet(p, columns=["event_timestamp"])) for p in tables.glob("*.parquet")
                       if p.name != "quarantine.parquet")
    rng = np.random.default_rng(0)
    item_pool = pd.read_parquet(tables / "item_text_embedding.parquet", columns=["item_id"]).item_id.to_numpy()
    user_pool = pd.read_parquet(tables / "user_profile.parquet", columns=["user_id"]).user_id.to_numpy()
    requests = [(int(rng.choice(user_pool)), rng.choice(item_pool, args.items, replace=False).tolist())
                for _ in range(args.n + 10)]
    result = {"items_per_lookup": args.items, "lookups": args.n, "offline_rows": offline_rows, "stores": {}}
    project = "recfeast_bench"
    for kind in ("sqlite", "redis"):
        fs = store.feature_store(repo, kind, project)
        store.apply(fs)
        online_rows = sum(pd.read_parquet(v.batch_source.path, columns=v.join_keys)[v.join_keys[0]].nunique()
                          for v in fs.list_feature_views())
        t = time.perf_counter()
        store.materialize(fs)
        mat_s = time.perf_counter() - t
        client = OnlineFeatureClient(repo, kind, project=project)
        svc = client.service

        def feast_lookup(u, items):
            return fs.get_online_features(features=svc, entity_rows=[
                {"user_id": u, "item_id": i, "request_ts": 893000000} for i in items]).to_dict()

        paths = {"recfeast_sdk": lambda u, items: client.get_features(u, items, 893000000),
                 "feast_get_online_features": feast_lookup}
        if kind == "redis":
            conn = config.redis_connection_string()
            host, port = conn.split(",")[0].split(":")
            r = redis.Redis(host=host, port=int(port))

            def raw(u, items):
                pipe = r.pipeline(transaction=False)
                for k in _raw_redis_keys(project, u, items):
                    pipe.hgetall(k)
                return pipe.execute()
            paths["raw_redis_pipelined_hgetall"] = raw
        lat = {}
        for name, fn in paths.items():
            for u, items in requests[:10]:
                fn(u, items)  # warm-up
            times = []
            for u, items in requests[10:]:
                t = time.perf_counter()
                fn(u, items)
                times.append(time.perf_counter() - t)
            lat[name] = percentiles_ms(times)
        # decoding alone: Feast's to_dict on one response; recfeast's raw read alone (the rest of
        # get_features is decoding and the on-demand features)
        u, items = requests[10]
        resp = fs.get_online_features(features=svc, entity_rows=[
            {"user_id": u, "item_id": i, "request_ts": 893000000} for i in items])
        keys = {"item_id": list(dict.fromkeys(items)), "user_id": [u]}
        dec = {"feast_to_dict": [], "recfeast_raw_read": []}
        for _ in range(50):
            t = time.perf_counter()
            resp.to_dict()
            dec["feast_to_dict"].append(time.perf_counter() - t)
            t = time.perf_counter()
            client.reader.read(keys, client.views)
            dec["recfeast_raw_read"].append(time.perf_counter() - t)
        result["stores"][kind] = {"decode": {k: percentiles_ms(v) for k, v in dec.items()},
                                  "materialize_s": mat_s, "online_rows_written": online_rows,
                                  "materialize_rows_per_s": online_rows / mat_s,
                                  "offline_rows_scanned_per_s": offline_rows / mat_s, "lookup": lat,
                                  "sdk_over_feast_p50": lat["recfeast_sdk"]["p50_ms"] / lat["feast_get_online_features"]["p50_ms"]}
        if kind == "redis":
            fs._get_provider().online_store.teardown(fs.config, fs.list_feature_views(), fs.list_entities())
    save("online", result)


if __name__ == "__main__":
    main()
