"""Point-in-time retrieval: seconds and peak memory for 100k and 1M entity rows, recfeast (DuckDB)
vs the same call on Feast's default ``file`` (dask) offline store, in one run.

Each case runs in a fresh subprocess so its peak RSS (ru_maxrss) is its own. Entity rows are random
(user, item, timestamp) triples over the MovieLens period; features: the scalar features of
``user_behavior`` and ``item_content`` (11 + 5), so 1M rows fit in memory on a 24 GiB machine; the
100k case is also run with the whole ``ranking_v1`` service (vectors included) through recfeast.

Needs the feature tables (`recfeast materialize ...` first).
Run: .venv/bin/python -m bench.bench_pit [--timeout 900]
"""

import argparse
import json
import resource
import subprocess
import sys
import time

SCALARS = ["user_behavior:" + f for f in ("rating_count_7d", "rating_count_30d", "rating_count_90d", "avg_rating_7d",
                                          "avg_rating_30d", "avg_rating_90d", "rating_count_total",
                                          "avg_rating_total", "last_rating_ts")] + \
          ["item_content:" + f for f in ("release_year", "runtime", "rating_count", "avg_rating", "popularity")]


def _case(store_kind: str, n: int, service: bool) -> dict:
    import warnings

    import numpy as np
    import pandas as pd

    warnings.filterwarnings("ignore")
    from recfeast import config
    from recfeast.store import feature_store
    from recfeast.training.dataset import get_training_set

    repo = config.repo_path()
    fs = feature_store(repo)
    if store_kind == "file":
        from feast import FeatureStore

        from recfeast.store import repo_config

        fs = FeatureStore(repo_path=str(repo), config=repo_config(repo, offline_store="file"))
    tables = config.tables_dir(repo)
    rng = np.random.default_rng(0)
    users = pd.read_parquet(tables / "user_profile.parquet", columns=["user_id"]).user_id.to_numpy()
    items = pd.read_parquet(tables / "item_text_embedding.parquet", columns=["item_id"]).item_id.to_numpy()
    t0, t1 = pd.Timestamp("1997-09-20", tz="UTC").value // 10**9, pd.Timestamp("1998-04-23", tz="UTC").value // 10**9
    ts = rng.integers(t0, t1, n)
    entity = pd.DataFrame({"user_id": rng.choice(users, n), "item_id": rng.choice(items, n),
                           "event_timestamp": pd.to_datetime(ts, unit="s", utc=True), "request_ts": ts})
    start = time.perf_counter()
    if store_kind == "file":
        feats = fs.get_feature_service("ranking_v1") if service else SCALARS
        out = fs.get_historical_features(entity_df=entity, features=feats).to_df()
    else:
        out, _ = get_training_set(fs, entity, "ranking_v1" if service else SCALARS)
    secs = time.perf_counter() - start
    return {"seconds": secs, "rows_in": n, "rows_out": len(out),
            "non_null_rating_count": int(out["rating_count"].notna().sum())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--timeout", type=int, default=900, help="seconds per case before it is stopped")
    ap.add_argument("--case", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        kind, n, service = args.case
        res = _case(kind, int(n), service == "service")
        res["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(res))
        return
    from bench.common import save

    cases = [("recfeast_duckdb", "duckdb", 100_000, "scalars"), ("feast_file", "file", 100_000, "scalars"),
             ("recfeast_duckdb", "duckdb", 1_000_000, "scalars"), ("feast_file", "file", 1_000_000, "scalars"),
             ("recfeast_duckdb", "duckdb", 100_000, "service")]
    results = []
    for name, kind, n, what in cases:
        try:
            proc = subprocess.run([sys.executable, "-m", "bench.bench_pit", "--case", kind, str(n), what],
                                  capture_output=True, text=True, timeout=args.timeout)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            res = json.loads(line[7:]) if line else {"error": proc.stderr[-800:]}
        except subprocess.TimeoutExpired:
            res = {"error": f"did not finish in {args.timeout} s (stopped)"}
        res.update(path=name, rows=n, features=what)
        print(json.dumps(res), flush=True)
        results.append(res)
    save("pit", {"what": "random (user, item, time) entity rows over the MovieLens period", "cases": results,
                 "scalar_features": SCALARS})


if __name__ == "__main__":
    main()
