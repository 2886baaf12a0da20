"""Events through the Redis event stream with 1, 2 and 4 ``recfeast ingest-worker`` processes:
events/s with a backlog, and event-to-online p50/p99 at a fixed offered rate; plus Redis memory
per logged event.

    python -m bench.bench_stream [--events 10000] [--users 2000] [--rate 100] [--seconds 20] [--workers 1,2,4]

Works in Redis database 14 (flushed before each run: the bench's own) and a throwaway repository:
a copy of ``feature_repo`` with its tables when it has them (``recfeast materialize`` ran), else the
test slice (~40 real MovieLens items, materialized here, ~1 min).

- anchor: today's single-process path, :meth:`Ingestor.ingest` with the SQLite log in batches of
  500 (validate, log, recompute, push), same events, same Redis online store, one torch thread
  (as each worker);
- backlog: all ``--events`` appended (``XADD`` via ``recfeast ingest``'s path, chunks of 1,000),
  events/s = events / (first append -> every entry acknowledged);
- latency: ``--rate`` events/s offered for ``--seconds`` (a batch every 0.1 s), event-to-online
  = a worker's clock after the push minus the arrival time stamped at ``XADD`` (same machine).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import save

ROOT = Path(__file__).resolve().parents[1]
DB = 14
URL = f"redis://127.0.0.1:6379/{DB}"


def _repo(tmp: Path, project: str, keep: Path | None = None) -> Path:
    from recfeast import store

    src = ROOT / "feature_repo"
    if keep is not None and (keep / "data" / "tables" / "item_text_embedding.parquet").is_file():
        store.apply(store.feature_store(keep, "sqlite", project))   # reuse a repo built by an earlier run
        return keep
    repo = keep or tmp / "feature_repo"
    repo.mkdir(parents=True, exist_ok=True)
    for name in ("feature_store.yaml", "feature_store.redis.yaml", "feature_definitions.py"):
        shutil.copy(src / name, repo / name)
    if (src / "data" / "tables" / "item_text_embedding.parquet").is_file():
        shutil.copytree(src / "data" / "tables", repo / "data" / "tables",
                        ignore=shutil.ignore_patterns("pending_online_refresh.json", ".*.tmp"))
        store.apply(store.feature_store(repo, "sqlite", project))
        return repo
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean
    from recfeast.materialize.job import JobConfig, run
    from tests.conftest import DATA_DIR, _write_slice

    data = tmp / "slice"
    _write_slice(data, clean(read_catalog(DATA_DIR)), DATA_DIR)
    run(JobConfig(data_dir=data, repo=repo, online_store="sqlite", project=project, progress=False))
    return repo


def _events(n: int, users: int, items: list[int], start_ts: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"user_id": 1_000_000 + int(rng.integers(users)), "item_id": int(rng.choice(items)), "action": "click",
             "event_timestamp": start_ts + i} for i in range(n)]


def _flush():
    import redis

    redis.Redis.from_url(URL).flushdb()


def _memory_per_event(log) -> dict:
    """Bytes (MEMORY USAGE, exact) of the stream, the id set and the per-user indexes, per logged event."""
    r, n = log.r, log.count()
    stream = r.memory_usage(log.stream, samples=0) or 0
    ids = r.memory_usage(log.ids_key, samples=0) or 0
    users = sum(r.memory_usage(k, samples=0) or 0 for k in r.scan_iter(f"{log.prefix}:user:*", count=1000))
    return {"events": n, "stream_B": stream / n, "id_set_B": ids / n, "user_index_B": users / n,
            "total_B": (stream + ids + users) / n}


def _run(repo: Path, project: str, workers: int, backlog: list[dict], live: list[dict], rate: float, tmp: Path) -> dict:
    from recfeast.materialize.ingest import Ingestor
    from recfeast.materialize.stream import wait_drained

    _flush()
    env = {**os.environ, "RECFEAST_PROJECT": project, "RECFEAST_EVENT_LOG": URL, "RECFEAST_ONLINE_STORE": "redis",
           "REDIS_CONNECTION_STRING": f"127.0.0.1:6379,db={DB}", "PYTHONPATH": str(ROOT)}
    env.pop("RECFEAST_CRASH_AT", None)
    outs = [tmp / f"delays_{workers}_{i}.npy" for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, "-c", "from recfeast.cli import main; main()", "ingest-worker",
                               "--repo-path", str(repo), "--consumer", f"w{i}", "--batch", "500", "--block-ms", "50",
                               "--quiet", "--delays-out", str(outs[i])], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(workers)]
    ing = Ingestor(repo, "redis", project, event_log=URL)
    try:
        while (ing.log.group_info() or {}).get("consumers", 0) < workers:   # every worker reading
            if any(p.poll() is not None for p in procs):
                raise SystemExit(f"a worker died: {[p.communicate()[1][-2000:] for p in procs if p.poll() is not None]}")
            time.sleep(0.2)
        t0 = time.perf_counter()
        for start in range(0, len(backlog), 1000):
            ing.ingest(backlog[start:start + 1000])
        appended = time.perf_counter() - t0
        if not wait_drained(ing.log, 1800, poll_s=0.01):
            raise SystemExit(f"not drained: {ing.log.group_info()}")
        backlog_s = time.perf_counter() - t0
        memory = _memory_per_event(ing.log)
        live_start_us = int(time.time() * 1e6)
        step = max(1, int(round(rate / 10)))
        t1 = time.perf_counter()
        for k, start in enumerate(range(0, len(live), step)):
            ing.ingest(live[start:start + step])
            time.sleep(max(0.0, t1 + (k + 1) * 0.1 - time.perf_counter()))
        offered = len(live) / (time.perf_counter() - t1)
        if not wait_drained(ing.log, 600, poll_s=0.01):
            raise SystemExit(f"not drained: {ing.log.group_info()}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.communicate(timeout=300)
        ing.close()
    d = np.concatenate([np.load(o) for o in outs if o.is_file()])
    lat = d[d[:, 0] >= live_start_us, 1] * 1000
    return {"workers": workers, "backlog_events": len(backlog), "append_events_per_s": round(len(backlog) / appended, 1),
            "events_per_s": round(len(backlog) / backlog_s, 1), "backlog_seconds": round(backlog_s, 2),
            "offered_events_per_s": round(offered, 1), "latency_events": int(lat.size),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "redis_bytes_per_event": {k: round(v, 1) for k, v in memory.items()}}


def _anchor(repo: Path, project: str, events: list[dict]) -> dict:
    """Today's in-process path: SQLite log, per-repo lock, push in the ingest call; batches of 500."""
    from recfeast.materialize.ingest import Ingestor

    _flush()
    os.environ["REDIS_CONNECTION_STRING"] = f"127.0.0.1:6379,db={DB}"
    ing = Ingestor(repo, "redis", project, event_log="sqlite")
    t = time.perf_counter()
    for start in range(0, len(events), 500):
        ing.ingest(events[start:start + 500])
    s = time.perf_counter() - t
    ing.close()
    return {"events": len(events), "events_per_s": round(len(events) / s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--rate", type=float, default=100.0, help="offered events/s in the latency phase")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--repo-dir", type=Path, default=None,
                    help="keep the throwaway repository here and reuse it on the next run (saves ~1-2 min)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)   # the anchor's encoder gets the same one thread as each worker
    project = f"bench_stream_{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    try:
        os.environ["REDIS_CONNECTION_STRING"] = f"127.0.0.1:6379,db={DB}"
        repo = _repo(tmp, project, args.repo_dir)
        items = pd.read_parquet(repo / "data" / "tables" / "item_text_embedding.parquet").item_id.tolist()
        backlog = _events(args.events, args.users, items, 1_700_000_000, 0)
        live = _events(int(args.rate * args.seconds), args.users, items, 1_700_100_000, 1)
        load_before = os.getloadavg()
        anchor = _anchor(repo, project, backlog)
        runs = [_run(repo, project, int(k), backlog, live, args.rate, tmp) for k in args.workers.split(",")]
        for r in runs:
            r["ratio_vs_anchor"] = round(r["events_per_s"] / anchor["events_per_s"], 2)
        result = {"anchor_in_process_sqlite_log": anchor, "runs": runs, "users": args.users,
                  "items": len(items), "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
        save("stream", result)
    finally:
        _flush()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
