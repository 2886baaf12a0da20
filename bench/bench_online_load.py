"""Online load: recfeast's direct writer against Feast's materialize, same tables, same run.

    python -m bench.bench_online_load --tables feature_repo/data/tables [--repeats 3]
    python -m bench.bench_online_load --synthetic 20000,100000 --anchor-max 20000 [--repeats 3]

``--tables``: the real feature tables (from ``recfeast materialize``), loaded with
``recfeast.materialize.online.load`` (``writer="direct"`` vs ``writer="feast"``: the whole load,
stale-row clearing and bookkeeping included) into a fresh copy of the repository.
``--synthetic N,..``: ``item_text_embedding`` (384-d) and ``item_image_embedding`` (1280-d) tables of
N items (10% of them with an older second version, so the latest-row selection works), loaded view
by view (``online.write_view`` vs Feast's ``FeatureStore.materialize``); Feast runs only up to
``--anchor-max`` items (it holds every row's protos in memory: GBs at 100k x 1280-d).

Every load runs in its own process (peak RSS is that process' ``ru_maxrss``; ``base`` is its RSS
after imports, before the load) into a project whose online rows were deleted just before, and the
writers alternate (feast, direct, feast, direct, ...) so machine load hits both alike. Reported:
median entity rows/s of ``--repeats`` runs per (tables, store, writer) and direct/feast ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VIEWS = {"item_text_embedding": ("text_embedding", "text_model", 384),
         "item_image_embedding": ("image_embedding", "image_model", 1280)}


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _empty(fs) -> None:
    """Delete the project's online rows, keeping SQLite's tables (created by apply)."""
    from recfeast.layout import view_layout

    if fs.config.online_store.type == "redis":
        fs._get_provider().online_store.teardown(fs.config, fs.list_feature_views(), fs.list_entities())
        return
    conn = fs._get_provider().online_store._get_conn(fs.config)
    with conn:
        for fv in fs.list_feature_views():
            conn.execute(f'DELETE FROM "{view_layout(fs.config, fv).table}"')


def worker(repo: str, kind: str, project: str, writer: str, views: str | None) -> dict:
    """One timed load in this process; prints a JSON line."""
    import pandas as pd
    import pyarrow.parquet as pq

    from recfeast import store as store_ops
    from recfeast.materialize import online

    fs = store_ops.feature_store(Path(repo), kind, project)
    _empty(fs)
    fvs = [fv for fv in fs.list_feature_views() if views is None or fv.name in views.split(",")]
    rows = 0
    for fv in fvs:
        if type(fv.stream_source).__name__ != "PushSource" and Path(fv.batch_source.path).is_file():
            t = pq.read_table(fv.batch_source.path, columns=[fv.join_keys[0]])
            rows += len(set(t.column(0).to_pylist()))
    base = _rss_mb()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if views is None:
        online.load(fs, Path(repo) / "data" / "tables", quiet=True, writer=writer)
    elif writer == "direct":
        for fv in fvs:
            online.write_view(fs, fv)
    else:
        start = min(pd.Timestamp(pq.read_table(fv.batch_source.path, columns=["event_timestamp"]).column(0)
                                 .to_pandas().min()) for fv in fvs).to_pydatetime()
        store_ops.materialize(fs, views=[fv.name for fv in fvs], start=start, quiet=True)
    dt = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime - ru0.ru_utime - ru0.ru_stime
    out = {"rows": rows, "seconds": dt, "rows_per_s": rows / dt, "cpu_s": cpu, "rows_per_cpu_s": rows / cpu,
           "base_rss_mb": base,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print("RESULT " + json.dumps(out), flush=True)
    return out


def _repo(tmp: Path, tables: Path | None) -> Path:
    repo = tmp / "feature_repo"
    repo.mkdir(parents=True)
    for name in ("feature_store.yaml", "feature_store.redis.yaml", "feature_definitions.py"):
        shutil.copy(ROOT / "feature_repo" / name, repo / name)
    (repo / "data" / "tables").mkdir(parents=True)
    if tables is not None:
        for p in Path(tables).glob("*.parquet"):
            (repo / "data" / "tables" / p.name).symlink_to(p.resolve())
    return repo


def synth_tables(out: Path, n: int, seed: int = 0) -> None:
    """The two embedding tables for ``n`` items, written in row groups of 10,000 (flat memory)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    for view, (feat, model_col, dim) in VIEWS.items():
        schema = pa.schema([("item_id", pa.int64()), (feat, pa.list_(pa.float32())), (model_col, pa.string()),
                            ("event_timestamp", pa.timestamp("us", "UTC")),
                            ("created_timestamp", pa.timestamp("us", "UTC"))])
        with pq.ParquetWriter(out / f"{view}.parquet", schema) as w:
            for lo in range(0, n, 10_000):
                ids = np.arange(lo, min(n, lo + 10_000), dtype=np.int64) + 1
                old = ids[ids % 10 == 0]  # an older version of every 10th item
                ids_all = np.concatenate([old, ids])
                m = len(ids_all)
                vec = rng.standard_normal((m, dim), dtype=np.float32)
                vec /= np.linalg.norm(vec, axis=1, keepdims=True)
                ev = np.where(np.arange(m) < len(old), 0, 1) * 86_400_000_000 + t0.value // 1000
                vals = pa.FixedSizeListArray.from_arrays(pa.array(vec.ravel()), dim).cast(pa.list_(pa.float32()))
                w.write_table(pa.table({
                    "item_id": ids_all, feat: vals, model_col: pa.array([f"{feat}-model@abc123"] * m),
                    "event_timestamp": pa.array(ev, pa.timestamp("us", "UTC")),
                    "created_timestamp": pa.array(ev, pa.timestamp("us", "UTC"))}, schema=schema))


def _run(repo: Path, kind: str, project: str, writer: str, views: str | None) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_online_load", "--worker", str(repo), kind, project, writer,
           views or "-"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode or line is None:
        raise SystemExit(f"worker failed ({' '.join(cmd)}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(line[7:])


def _series(label, repo, stores, repeats, views, feast_too) -> list[dict]:
    from recfeast import store as store_ops

    projects = {w: f"bench_{uuid.uuid4().hex[:8]}" for w in ("feast", "direct")}
    for kind in stores:
        for proj in projects.values():
            store_ops.apply(store_ops.feature_store(repo, kind, proj))
    out = []
    for kind in stores:
        runs = {"feast": [], "direct": []}
        for _ in range(repeats):
            for w in (("feast", "direct") if feast_too else ("direct",)):
                r = _run(repo, kind, projects[w], w, views)
                runs[w].append(r)
                print(f"{label} {kind} {w}: {r['rows']} rows {r['seconds']:.2f} s {r['rows_per_s']:.0f} rows/s "
                      f"peak {r['peak_rss_mb']:.0f} MB (base {r['base_rss_mb']:.0f})", flush=True)
        row = {"tables": label, "store": kind}
        for w, rs in runs.items():
            if rs:
                row[w] = {"rows": rs[0]["rows"], "rows_per_s_median": float(np.median([r["rows_per_s"] for r in rs])),
                          "seconds": [round(r["seconds"], 3) for r in rs],
                          "rows_per_cpu_s_median": float(np.median([r.get("rows_per_cpu_s", np.nan) for r in rs])),
                          "peak_rss_mb_max": max(r["peak_rss_mb"] for r in rs),
                          "base_rss_mb": float(np.median([r["base_rss_mb"] for r in rs]))}
        if runs["feast"]:
            ratios = [f["seconds"] / d["seconds"] for f, d in zip(runs["feast"], runs["direct"])]
            row["ratio_median"] = float(np.median(ratios))
            row["ratios"] = [round(x, 2) for x in ratios]
        out.append(row)
        # drop both projects' rows
        for proj in projects.values():
            _empty(store_ops.feature_store(repo, kind, proj))
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        repo, kind, project, writer, views = sys.argv[2:7]
        worker(repo, kind, project, writer, None if views == "-" else views)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=Path, help="folder of real feature tables (recfeast materialize)")
    ap.add_argument("--synthetic", default="", help="comma-separated item counts, e.g. 20000,100000")
    ap.add_argument("--anchor-max", type=int, default=20000, help="largest synthetic size Feast also loads")
    ap.add_argument("--stores", default="redis,sqlite")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--name", default="online_load", help="result file bench/results/NAME.json")
    args = ap.parse_args()
    from bench.common import save

    os.environ.setdefault("REDIS_CONNECTION_STRING", "127.0.0.1:6379,db=14")
    stores = args.stores.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="rf_bench_load_") as tmp:
        tmp = Path(tmp)
        if args.tables:
            repo = _repo(tmp / "real", args.tables)
            results += _series("movielens", repo, stores, args.repeats, None, True)
        for n in [int(x) for x in args.synthetic.split(",") if x]:
            repo = _repo(tmp / f"synth{n}", None)
            synth_tables(repo / "data" / "tables", n)
            results += _series(f"synthetic{n}", repo, stores, args.repeats, ",".join(VIEWS), n <= args.anchor_max)
            shutil.rmtree(repo / "data" / "tables")
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    save(args.name, {"command": " ".join(sys.argv), "load_avg": load, "results": results})


if __name__ == "__main__":
    main()
