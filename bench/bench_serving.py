"""Serving benchmarks: online features in process, /recommend over HTTP, query-embedding cache.

Needs the feature tables and a ranking model: `recfeast materialize --data-dir ../shared/data/movielens-100k`
and `recfeast train --data-dir ../shared/data/movielens-100k` first. Loads the tables into Redis
($REDIS_CONNECTION_STRING, default 127.0.0.1:6379) under the project "recfeast_bench" (a user's keys
are not touched; removed at the end), then:

1. features: 1 random user + 100 random items through ``ranking_v1`` (384-d text, 1280-d image, 384-d
   sequence vectors, both on-demand views), the paths interleaved request by request so machine noise
   hits them alike: recfeast ``get_features`` (typed arrays + statuses; and with the DataFrame built);
   Feast ``get_online_features`` (protos; and ``.to_dict()``); the floor: one redis-py pipeline of the
   same HMGETs recfeast sends (same bytes, no decoding), and of HGETALLs.
2. http: ``recfeast serve --online-store redis`` in a subprocess (defaults: item cache on, one
   compute thread); N client threads POST /recommend (random users, k=10) for D seconds; p50/p99,
   QPS, errors, server CPU per request. Clients and server share the machine.
3. query: ``QueryEmbedder`` over the real text encoder: miss (new text) vs hit (cached) latency for
   MovieLens titles, and throughput of 16 concurrent callers (batched) vs one caller.
4. recommend: ``RecommendService.recommend`` in process on one thread (torch 1 thread, as ``recfeast
   serve`` runs it), random users, k=10, 100 retrieved + 20 popular candidates, on each store of
   ``--stores``; beside it, interleaved request by request in the same process, the same service
   without the item cache (``item_cache=0``: two round trips) and the anchor ``recommend_reference``
   (the path before the columnar ranker: three round trips, the DataFrame ranker). Per path:
   p50/p99 and the per-request split into stages (features = the store reads with decoding or the
   item cache, retrieve, rank), and the round trips of a request with the caches warm.

``--http-reference`` adds the anchor over HTTP: the same server and clients with ``/recommend``
answered by ``recommend_reference`` (run before the new path, in the same invocation).

Run: .venv/bin/python -m bench.bench_serving [--only features,http,query,recommend] [--duration 60] [--clients 8]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np

PROJECT = "recfeast_bench"
AS_OF = 893_300_000  # just after the last MovieLens-100k rating


def _load_redis(repo):
    from recfeast import config
    from recfeast import store
    from recfeast.materialize import online

    fs = store.feature_store(repo, "redis", PROJECT)
    store.apply(fs)
    online.load(fs, config.tables_dir(repo), quiet=True)
    return fs


def bench_features(repo, n: int, n_items: int) -> dict:
    import pandas as pd

    from bench.common import percentiles_ms
    from bench.common import raw_hmget as common_raw_hmget
    from recfeast import config
    from recfeast.layout import entity_key_bytes
    from recfeast.serving.sdk import OnlineFeatureClient

    tables = config.tables_dir(repo)
    rng = np.random.default_rng(0)
    items = pd.read_parquet(tables / "item_text_embedding.parquet", columns=["item_id"]).item_id.unique()
    users = pd.read_parquet(tables / "user_profile.parquet", columns=["user_id"]).user_id.unique()
    reqs = [(int(rng.choice(users)), [int(i) for i in rng.choice(items, n_items, replace=False)]) for _ in range(n + 20)]
    client = OnlineFeatureClient(repo, "redis", project=PROJECT)
    fs, svc, r = client.store, client.service, client.reader.client
    project = PROJECT.encode()
    raw_hmget = common_raw_hmget(client, PROJECT)

    def rows(u, its):
        return [{"user_id": u, "item_id": i, "request_ts": AS_OF} for i in its]

    def raw_hgetall(u, its):
        with r.pipeline(transaction=False) as p:
            p.hgetall(entity_key_bytes("user_id", u) + project)
            for i in its:
                p.hgetall(entity_key_bytes("item_id", i) + project)
            return p.execute()

    paths = {
        "recfeast get_features (arrays)": lambda u, its: client.get_features(u, its, AS_OF),
        "recfeast get_features + .frame": lambda u, its: client.get_features(u, its, AS_OF).frame,
        "feast get_online_features (protos)": lambda u, its: fs.get_online_features(features=svc, entity_rows=rows(u, its)),
        "feast get_online_features + .to_dict()": lambda u, its: fs.get_online_features(features=svc, entity_rows=rows(u, its)).to_dict(),
        "raw redis pipeline, same HMGETs (floor)": raw_hmget,
        "raw redis pipeline, HGETALL": raw_hgetall,
    }
    times = {k: [] for k in paths}
    for k, (u, its) in enumerate(reqs):
        for name, fn in paths.items():
            t = time.perf_counter()
            fn(u, its)
            if k >= 20:  # warm-up
                times[name].append(time.perf_counter() - t)
    lat = {k: percentiles_ms(v) for k, v in times.items()}
    feast, floor = lat["feast get_online_features (protos)"]["p50_ms"], lat["raw redis pipeline, same HMGETs (floor)"]["p50_ms"]
    for v in lat.values():
        v["vs_feast_p50"], v["vs_floor_p50"] = v["p50_ms"] / feast, v["p50_ms"] / floor
    reply = raw_hmget(*reqs[0])
    return {"items_per_lookup": n_items, "lookups": n, "bytes_per_lookup": sum(len(b or b"") for row in reply for b in row),
            "latency": lat}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its children (uvicorn workers)."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _wait_up(url: str, proc, timeout: float = 180) -> None:
    import httpx

    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stdout.read()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not start")


NEW, REF, BASE = ("recommend (columnar, user read once, item cache)",
                  "recommend_reference (DataFrame ranker, user read twice, this tree's reader)",
                  "recommend at the base tree (the code before this path, separate process)")
UNCACHED = "recommend without the item cache (--item-cache 0: the candidates read from the store)"


def _time_paths(repo, checkpoint, store: str, n: int, methods: tuple[str, ...]) -> dict:
    """Time ``RecommendService`` methods in this process, one thread, interleaved request by request.

    Returns:
        ``{method: {"times": [s], "stages": {stage: [s]}, "candidates": [int], "answers": [[ids]],
        "round_trips": [{join key: entities}]}}``.
    """
    import pandas as pd
    import torch

    from recfeast import config
    from recfeast.serving.service import RecommendService, ServiceConfig

    torch.set_num_threads(1)
    repo, checkpoint = Path(repo), Path(checkpoint)
    project = PROJECT if store == "redis" else None
    stages: dict[str, float] = {}

    def observe(stage, seconds):
        stages[stage] = stages.get(stage, 0.0) + seconds

    def service(**kw):
        return RecommendService.from_config(ServiceConfig(
            checkpoint=checkpoint, repo=repo, online_store=store, project=project, as_of=AS_OF, candidates=100,
            popular=20, refresh_every_s=0, load_query_encoder=False, **kw), observe=observe)

    svc = service()
    # "recommend_uncached": recommend of a second service without the item cache (this tree only)
    fns = {m: service(item_cache=0).recommend if m == "recommend_uncached" else getattr(svc, m) for m in methods}
    users = pd.read_parquet(config.tables_dir(repo) / "user_profile.parquet", columns=["user_id"]).user_id.unique()
    rng = np.random.default_rng(1)
    reqs = [int(u) for u in rng.choice(users, n + 20)]
    out = {m: {"times": [], "stages": {}, "candidates": [], "answers": [],
               "round_trips": _count_round_trips(fns[m], reqs[0])} for m in methods}
    for j, u in enumerate(reqs):
        for m in methods:
            stages.clear()
            t = time.perf_counter()
            res = fns[m](u, 10)
            dt = time.perf_counter() - t
            if j >= 20:   # warm-up
                o = out[m]
                o["times"].append(dt)
                o["candidates"].append(res["candidates"])
                o["answers"].append([i["item_id"] for i in res["items"]])
                for stage, sec in stages.items():
                    o["stages"].setdefault(stage, []).append(sec)
    return out


def _base_paths(base_tree: Path, repo, checkpoint, store: str, n: int) -> dict:
    """:func:`_time_paths` of ``recommend`` with the recfeast of ``base_tree`` (a package folder
    laid out as installed: ``recfeast/``, ``recfeast/serving/``...), in a subprocess that starts
    without site hooks so the editable install of this tree does not shadow it."""
    import json

    site = [p for p in sys.path if p.endswith("site-packages")]
    here = str(Path(__file__).resolve().parents[1])
    code = ("import sys, json, warnings\n"
            "paths = json.loads(sys.argv[1]); sys.path[:0] = paths; warnings.filterwarnings('ignore')\n"
            "import recfeast, bench.bench_serving as b\n"
            "if not recfeast.__file__.startswith(paths[0]): raise SystemExit('recfeast from ' + recfeast.__file__)\n"
            "print('@@' + json.dumps(b._time_paths(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), ('recommend',))))")
    paths = [str(base_tree), here, *site]
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-S", "-c", code, json.dumps(paths), str(repo), str(checkpoint), store, str(n)],
                          capture_output=True, text=True, env=env, cwd=here)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("@@")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"base tree run failed: {proc.stderr[-2000:]}")
    return json.loads(line[2:])["recommend"]


def bench_recommend(repo, checkpoint, store: str, n: int, base_tree: Path | None = None) -> dict:
    """``recommend`` vs ``recommend_reference`` in process, one thread, interleaved; with
    ``base_tree`` also the ``recommend`` of the code before (see the module doc)."""
    import torch

    from bench.common import percentiles_ms

    runs = {}
    if base_tree is not None:
        runs[BASE] = _base_paths(base_tree, repo, checkpoint, store, n)
    both = _time_paths(repo, checkpoint, store, n, ("recommend", "recommend_uncached", "recommend_reference"))
    runs[NEW], runs[UNCACHED], runs[REF] = both["recommend"], both["recommend_uncached"], both["recommend_reference"]
    out = {}
    for name, r in runs.items():
        out[name] = {**percentiles_ms(r["times"]), "mean_candidates": float(np.mean(r["candidates"])),
                     "round_trips": r["round_trips"], "same_top10_as_new": sum(a == b for a, b in zip(r["answers"], runs[NEW]["answers"])),
                     "stage_p50_ms": {k: 1000 * float(np.median(v)) for k, v in r["stages"].items()},
                     "stage_mean_ms": {k: 1000 * float(np.mean(v)) for k, v in r["stages"].items()}}
    anchors = {k: {"p50": out[k]["p50_ms"] / out[NEW]["p50_ms"], "p99": out[k]["p99_ms"] / out[NEW]["p99_ms"]}
               for k in out if k != NEW}
    return {"store": store, "requests": n, "torch_threads": torch.get_num_threads(), "speedup": anchors, "latency": out}


def _count_round_trips(fn, user) -> list:
    """Store reads of one ``fn(user, 10)`` (a bound method of a service) after one uncounted call
    (caches warm), counted at the reader (one ``read`` is one Redis pipeline or one SQLite
    statement): ``[{join key: entities read}, ...]``."""
    reader = fn.__self__.client.reader
    real, calls = reader.read, []

    def counting(keys, views, **kw):
        calls.append({jk: len(ids) for jk, ids in keys.items() if len(ids)})
        return real(keys, views, **kw)

    fn(user, 10)
    reader.read = counting
    try:
        fn(user, 10)
        return calls
    finally:
        del reader.read


def _serve_reference(argv: list[str]) -> None:
    """``recfeast serve`` with ``/recommend`` answered by ``recommend_reference`` (the HTTP anchor)."""
    from recfeast.cli import main
    from recfeast.serving.service import RecommendService

    RecommendService.recommend = RecommendService.recommend_reference
    main(argv, prog_name="recfeast")


def bench_http(repo, checkpoint, duration: float, clients: int, port: int, server: str = "recommend",
               base_tree: Path | None = None, workers: int = 1) -> dict:
    """``/recommend`` over HTTP (see the module doc). ``server``: ``recommend`` (this tree's
    ``recfeast serve``), ``reference`` (its ``/recommend`` answered by ``recommend_reference``) or
    ``base`` (``recfeast serve`` of ``base_tree``); ``workers`` > 1: this tree's app under uvicorn
    with that many worker processes sharing the port."""
    import httpx
    import pandas as pd

    from bench.common import percentiles_ms
    from recfeast import config

    users = pd.read_parquet(config.tables_dir(repo) / "user_profile.parquet", columns=["user_id"]).user_id.unique()
    exe = str(Path(sys.executable).parent / "recfeast")
    import secrets

    key = secrets.token_urlsafe(32)   # a key of this run only, through the environment; no rate limit
    env = {**os.environ, "RECFEAST_PROJECT": PROJECT, "RECFEAST_API_KEYS": f"{key}=read+metrics"}
    cmd = [exe, "serve", "--repo-path", str(repo), "--online-store", "redis", "--model", str(checkpoint), "--port",
           str(port), "--as-of", str(AS_OF), "--no-search", "--rate-limit", "0"]
    here = Path(__file__).resolve().parents[1]
    if server == "reference":
        run = [sys.executable, "-m", "bench.bench_serving", "--serve-reference", *cmd[1:]]
    elif server == "base":
        import json

        site = [p for p in sys.path if p.endswith("site-packages")]
        code = ("import sys, json; sys.path[:0] = json.loads(sys.argv[1]); import recfeast\n"
                "if not recfeast.__file__.startswith(sys.path[0]): raise SystemExit('recfeast from ' + recfeast.__file__)\n"
                "from recfeast.cli import main; main(sys.argv[2:], prog_name='recfeast')")
        run = [sys.executable, "-S", "-c", code, json.dumps([str(base_tree), *site]), *cmd[1:]]
        env["PYTHONPATH"] = ""
    elif workers > 1:
        run = [sys.executable, "-m", "bench.bench_serving", "--serve-workers", str(workers), *cmd[2:]]
    else:
        run = cmd
    proc = subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=here)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc)
        lat, errors, lock = [], [], threading.Lock()
        stop = time.perf_counter() + duration

        def worker(seed):
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=url, timeout=30, headers={"X-API-Key": key}) as c:
                for _ in range(20):  # warm-up, not counted
                    c.post("/recommend", json={"user_id": int(rng.choice(users)), "k": 10})
                mine, bad = [], []
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    try:
                        resp = c.post("/recommend", json={"user_id": int(rng.choice(users)), "k": 10})
                        ok = resp.status_code == 200 and len(resp.json()["items"]) == 10
                    except httpx.HTTPError as exc:
                        ok, resp = False, exc
                    mine.append(time.perf_counter() - t)
                    if not ok:
                        bad.append(str(getattr(resp, "text", resp))[:200])
            with lock:
                lat.extend(mine)
                errors.extend(bad)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(clients)]
        cpu0 = _cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        server_cpu = _cpu_seconds(proc.pid) - cpu0   # includes the clients' 20 warm-up requests each
        metrics = httpx.get(url + "/metrics", headers={"X-API-Key": key}).text
        stages = {}
        for line in metrics.splitlines():
            if line.startswith("recfeast_stage_seconds_sum") or line.startswith("recfeast_stage_seconds_count"):
                name, value = line.rsplit(" ", 1)
                stage = name.split('stage="')[1].split('"')[0]
                stages.setdefault(stage, {})["sum" if "_sum" in name else "count"] = float(value)
        return {"command": " ".join(cmd[1:]), "server": server, "workers": workers, "clients": clients, "duration_s": wall, "requests": len(lat),
                "errors": len(errors), "error_samples": errors[:3], "qps": len(lat) / wall,
                "server_cpu_ms_per_request": 1000 * server_cpu / max(1, len(lat) + 20 * clients),
                "latency": percentiles_ms(lat),
                "server_stage_mean_ms": {k: 1000 * v["sum"] / v["count"] for k, v in stages.items() if v.get("count")}}
    finally:
        proc.terminate()
        proc.wait(30)


def bench_query(data_dir: Path | None, n: int) -> dict:
    import pandas as pd
    import torch

    from bench.common import percentiles_ms
    from recfeast.encoders import TextEncoder
    from recfeast.serving.query import QueryEmbedder

    torch.set_num_threads(1)  # as `recfeast serve` runs it
    titles = pd.read_csv(Path(data_dir) / "u.item", sep="|", encoding="latin-1", header=None, usecols=[1])[1]
    queries = [f"{t.rsplit('(', 1)[0].strip()} movie" for t in titles.drop_duplicates().iloc[:2 * n]]
    enc = TextEncoder()
    emb = QueryEmbedder(enc, max_wait_ms=2.0)
    emb.embed("warm up")
    miss, hit = [], []
    for q in queries[:n]:
        t = time.perf_counter()
        emb.embed(q)
        miss.append(time.perf_counter() - t)
    for q in queries[:n]:
        t = time.perf_counter()
        _, was_hit = emb.embed(q)
        hit.append(time.perf_counter() - t)
        assert was_hit
    # throughput on new texts: one caller vs 16 concurrent callers (batched by the worker)
    fresh = queries[n:2 * n]
    half = len(fresh) // 2
    t = time.perf_counter()
    for q in fresh[:half]:
        emb.embed(q)
    one = half / (time.perf_counter() - t)
    batches_before = len(emb.batches)
    todo = list(fresh[half:])
    lock = threading.Lock()

    def caller():
        while True:
            with lock:
                if not todo:
                    return
                q = todo.pop()
            emb.embed(q)

    threads = [threading.Thread(target=caller) for _ in range(16)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    many = (len(fresh) - half) / (time.perf_counter() - t)
    sizes = emb.batches[batches_before:]
    m, h = percentiles_ms(miss), percentiles_ms(hit)
    return {"model": enc.model_id, "queries": n, "torch_threads": 1, "miss": m, "hit": h,
            "miss_over_hit_p50": m["p50_ms"] / h["p50_ms"], "sequential_qps": one, "concurrent16_qps": many,
            "concurrent16_mean_batch": float(np.mean(sizes)) if sizes else 0.0}


def _serve_workers(workers: int, argv: list[str]) -> None:
    """This tree's app under uvicorn with ``workers`` processes on one port (``recfeast serve``
    runs one); ``argv``: the ``recfeast serve`` options the benchmark passes."""
    import json

    import uvicorn

    opts = dict(zip(argv[::2], argv[1::2]))
    os.environ["RECFEAST_BENCH_SERVE"] = json.dumps({"repo": opts["--repo-path"], "store": opts["--online-store"],
                                                    "model": opts["--model"], "as_of": int(opts["--as-of"])})
    uvicorn.run("bench.bench_serving:_worker_app", factory=True, host="127.0.0.1", port=int(opts["--port"]),
                workers=workers, log_level="warning", access_log=False)


def _worker_app():
    """One worker's app (:func:`_serve_workers`): the service of ``$RECFEAST_BENCH_SERVE``, keys from
    ``$RECFEAST_API_KEYS``, no rate limit, torch 1 thread, no /events or /admin/reload."""
    import json

    import torch

    from recfeast.serving.api import build_app
    from recfeast.serving.security import ApiSettings
    from recfeast.serving.service import ServiceConfig

    torch.set_num_threads(1)
    o = json.loads(os.environ["RECFEAST_BENCH_SERVE"])
    cfg = ServiceConfig(checkpoint=o["model"], repo=o["repo"], online_store=o["store"], as_of=o["as_of"],
                        load_query_encoder=False)
    return build_app(cfg, settings=ApiSettings(rate_per_s=0))


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-reference":
        return _serve_reference(sys.argv[2:])
    if len(sys.argv) > 2 and sys.argv[1] == "--serve-workers":
        return _serve_workers(int(sys.argv[2]), sys.argv[3:])
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=None)
    ap.add_argument("--model", default="runs/ranking/ranking_model.pt")
    ap.add_argument("--data-dir", default="../shared/data/movielens-100k")
    ap.add_argument("--only", default="features,http,query")
    ap.add_argument("--n", type=int, default=300, help="timed lookups per path")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--stores", default="sqlite,redis", help="online stores of the in-process recommend part")
    ap.add_argument("--base-tree", default=None,
                    help="recfeast of an earlier commit laid out as installed (recfeast/, recfeast/serving/, ...): "
                         "its recommend is timed too, in a subprocess (the anchor of the code before)")
    ap.add_argument("--http-reference", action="store_true",
                    help="also serve /recommend by the reference path (the anchor), before the new path")
    ap.add_argument("--http-workers", default="1",
                    help="uvicorn worker processes of the new path's server, comma-separated (one run each)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from bench.common import save
    from recfeast import config

    repo = config.repo_path(args.repo)
    parts = set(args.only.split(","))
    result = {"project": PROJECT, "as_of": AS_OF, "load_before": os.getloadavg()}
    stores = args.stores.split(",")
    fs = _load_redis(repo) if parts & {"features", "http"} or ("recommend" in parts and "redis" in stores) else None
    try:
        if "features" in parts:
            result["features"] = bench_features(repo, args.n, 100)
        if "recommend" in parts:
            base = Path(args.base_tree).resolve() if args.base_tree else None
            result["recommend"] = [bench_recommend(repo, Path(args.model).resolve(), st, args.n, base) for st in stores]
        if "http" in parts:
            model = Path(args.model).resolve()
            runs = []
            if args.base_tree:
                runs.append(bench_http(repo, model, args.duration, args.clients, args.port, "base",
                                       Path(args.base_tree).resolve()))
            if args.http_reference:
                runs.append(bench_http(repo, model, args.duration, args.clients, args.port, "reference"))
            for w in (int(x) for x in args.http_workers.split(",")):
                runs.append(bench_http(repo, model, args.duration, args.clients, args.port, workers=w))
            result["http"] = runs
        if "query" in parts:
            result["query"] = bench_query(args.data_dir, args.queries)
    finally:
        if fs is not None:
            fs._get_provider().online_store.teardown(fs.config, fs.list_feature_views(), fs.list_entities())
    result["load_after"] = os.getloadavg()
    save("serving", result)


if __name__ == "__main__":
    main()
