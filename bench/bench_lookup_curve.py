"""Online lookup latency against the number of items: recfeast's SDK, Feast's SDK, raw Redis.

    python -m bench.bench_lookup_curve [--repo feature_repo] [--sizes 1,10,100,300,1000] [--n 40]

Needs the feature tables (``recfeast materialize``). Loads them into Redis under the project
``recfeast_bench`` (removed at the end), then for each size: 1 random user + N random items through
``ranking_v1``, the three paths interleaved request by request (recfeast ``get_features``, Feast
``get_online_features`` returning protos, and the floor: one redis-py pipeline of the same HMGETs
recfeast sends, no decoding). Writes ``bench/results/lookup_curve.json`` and ``.png`` (p50 solid,
p99 dashed, log-log).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.bench_serving import AS_OF, PROJECT, _load_redis

PATHS = ("recfeast get_features", "feast get_online_features", "raw redis pipelined HMGET (floor)")


def curve(repo, sizes, n: int) -> dict:
    import pandas as pd

    from bench.common import percentiles_ms, raw_hmget
    from recfeast import config
    from recfeast.serving.sdk import OnlineFeatureClient

    tables = config.tables_dir(repo)
    rng = np.random.default_rng(0)
    items = pd.read_parquet(tables / "item_text_embedding.parquet", columns=["item_id"]).item_id.unique()
    users = pd.read_parquet(tables / "user_profile.parquet", columns=["user_id"]).user_id.unique()
    client = OnlineFeatureClient(repo, "redis", project=PROJECT)
    fs, svc = client.store, client.service
    raw = raw_hmget(client, PROJECT)

    fns = dict(zip(PATHS, (
        lambda u, its: client.get_features(u, its, AS_OF),
        lambda u, its: fs.get_online_features(features=svc, entity_rows=[
            {"user_id": u, "item_id": i, "request_ts": AS_OF} for i in its]),
        raw)))
    out = {}
    for size in sizes:
        m = max(20, n // 3) if size >= 300 else n
        reqs = [(int(rng.choice(users)), [int(i) for i in rng.choice(items, size, replace=size > len(items))])
                for _ in range(m + 5)]
        times = {k: [] for k in PATHS}
        for k, (u, its) in enumerate(reqs):
            for name, fn in fns.items():
                t = time.perf_counter()
                fn(u, its)
                if k >= 5:  # warm-up
                    times[name].append(time.perf_counter() - t)
        out[size] = {k: percentiles_ms(v) for k, v in times.items()}
        print(size, {k: (round(v["p50_ms"], 2), round(v["p99_ms"], 2)) for k, v in out[size].items()}, flush=True)
    return out


def plot(res: dict, path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(s) for s in res)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    for name, color in zip(PATHS, ("tab:blue", "tab:red", "tab:gray")):
        p50 = [res[s][name]["p50_ms"] for s in sizes]
        p99 = [res[s][name]["p99_ms"] for s in sizes]
        ax.plot(sizes, p50, "o-", color=color, label=f"{name} p50")
        ax.plot(sizes, p99, "s--", color=color, alpha=0.7, label=f"{name} p99")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("items per lookup (+ 1 user)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=None)
    ap.add_argument("--sizes", default="1,10,100,300,1000")
    ap.add_argument("--n", type=int, default=40, help="lookups per size (a third of it, >= 20, at 300+)")
    args = ap.parse_args()
    from bench.common import RESULTS, save
    from recfeast import config

    repo = config.repo_path(args.repo)
    fs = _load_redis(repo)
    try:
        res = curve(repo, [int(s) for s in args.sizes.split(",")], args.n)
    finally:
        fs._get_provider().online_store.teardown(fs.config, fs.list_feature_views(), fs.list_entities())
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    save("lookup_curve", {"command": "python -m bench.bench_lookup_curve " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if v is not None), "load_avg": load,
        "results": {str(k): v for k, v in res.items()}})
    plot(res, RESULTS / "lookup_curve.png", f"ranking_v1 lookup, Redis, load avg {load[0]}")
    print(RESULTS / "lookup_curve.png")


if __name__ == "__main__":
    main()
