"""Embedding throughput on Ray: one vs two Ray workers (scaling efficiency) against the local engine,
and the Redis memory of one item's vectors, the inputs of the 10M-item estimate in BENCHMARKS.md.

Needs a Ray cluster with two 1-CPU nodes at --address (the README's "Scaling out" commands, or
``ray start --head --num-cpus=1 ...`` plus ``ray start --address=... --num-cpus=1``).

Run: .venv/bin/python -m bench.bench_ray --data-dir ../shared/data/movielens-100k --address 127.0.0.1:18700

Each engine call is timed whole (a Ray call starts its actors and loads the model in each: that is
what a job pays, "end to end"), and the Ray engine also reports the encoding window (first batch
start to last batch end in the actors, :attr:`RayEngine.last_seconds`): "steady" items/s, the rate
a long job approaches. The local engine's call runs on an encoder already loaded, so its end-to-end
and steady figures are one. Median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from functools import partial


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _measure(engine, factory, inputs, batch, local, repeat) -> dict:
    walls, windows = [], []
    for _ in range(repeat):
        walls.append(_time(lambda: engine.encode(factory, inputs, batch, local=local)))
        windows.append(getattr(engine, "last_seconds", {}).get("encoding", walls[-1]))
    wall, window = statistics.median(walls), statistics.median(windows)
    return {"n": len(inputs), "wall_s": walls, "encoding_s": windows,
            "items_per_s_end_to_end": len(inputs) / wall, "items_per_s_steady": len(inputs) / window,
            "startup_s": wall - window}


def redis_bytes_per_item(dims=(384, 1280)) -> dict:
    """Bytes Redis holds per item for vectors of ``dims`` in Feast 0.67's layout, measured: one hash
    per entity (key: serialised entity key + project), one field per feature (``mmh3`` of
    ``view:feature``) holding a serialised ``ValueProto`` float list, plus ``_ts:<view>``. Writes
    200 real-layout hashes into Redis db 15 under a throwaway prefix, asks ``MEMORY USAGE``, deletes them."""
    import numpy as np
    import redis
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import FloatList, Value
    from google.protobuf.timestamp_pb2 import Timestamp

    r = redis.Redis(host="127.0.0.1", port=6379, db=15)
    rng = np.random.default_rng(0)
    out = {}
    for label, views in {"text": [384], "image": [1280], "text+image": list(dims)}.items():
        sizes = []
        for i in range(200):
            key = serialize_entity_key(EntityKey(join_keys=["item_id"], entity_values=[Value(int64_val=10**9 + i)]),
                                       entity_key_serialization_version=3) + b"rfbench_mem"
            fields = {}
            for d in views:
                v = rng.standard_normal(d).astype(np.float32)
                fields[_mmh3(f"view{d}:embedding")] = Value(float_list_val=FloatList(val=v)).SerializeToString()
                fields[f"_ts:view{d}".encode()] = Timestamp(seconds=1_700_000_000).SerializeToString()
            r.hset(key, mapping=fields)
            sizes.append(r.memory_usage(key, samples=0))
            r.delete(key)
        out[label] = {"bytes_per_item": float(np.mean(sizes)), "raw_float_bytes": 4 * sum(views)}
    out["redis_version"] = r.info()["redis_version"]
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--address", required=True, help="Ray cluster with two 1-CPU nodes")
    ap.add_argument("--n-texts", type=int, default=1682)
    ap.add_argument("--n-images", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--skip-images", action="store_true")
    args = ap.parse_args()

    import torch

    from bench.common import save
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean
    from recfeast.encoders import ImageEncoder, TextEncoder
    from recfeast.materialize import engine as engines
    from recfeast.materialize.features import item_text
    from recfeast import model_registry

    load_before = _uptime()
    items = clean(read_catalog(args.data_dir)).items
    texts = item_text(items)[: args.n_texts]
    posters = [p for p in items["image_path"] if p is not None][: args.n_images]
    text_local, text_factory = TextEncoder(), partial(model_registry.text_encoder, os.getcwd(), "default")
    runs = {"text": (text_factory, texts, 64, text_local)}
    if not args.skip_images:
        runs["image"] = (partial(ImageEncoder, "efficientnet-lite0"), posters, 32, ImageEncoder())
    local, ray_engine = engines.LocalEngine(), engines.RayEngine(args.address)
    if ray_engine.workers != 2:
        raise SystemExit(f"{args.address}: expected a cluster with 2 CPUs (two 1-CPU nodes), got {ray_engine.workers}")
    ray1 = engines.RayEngine(args.address, workers=1)
    result = {"what": "engine.encode over MovieLens-100k item texts (all-MiniLM-L6-v2, 384-d) and posters "
                      "(EfficientNet-Lite0, 1280-d); Ray actors 1 CPU each, torch 1 thread each; the local "
                      f"engine runs torch with {torch.get_num_threads()} threads in one process",
              "address": args.address, "repeat": args.repeat, "load_before": load_before}
    for kind, (factory, inputs, batch, loc) in runs.items():
        res = {"local": _measure(local, factory, inputs, batch, loc, args.repeat),
               "ray_1_worker": _measure(ray1, factory, inputs, batch, None, args.repeat),
               "ray_2_workers": _measure(ray_engine, factory, inputs, batch, None, args.repeat)}
        for k in ("items_per_s_steady", "items_per_s_end_to_end"):
            res[f"scaling_efficiency_{k}"] = res["ray_2_workers"][k] / (2 * res["ray_1_worker"][k])
            res[f"ray2_over_local_{k}"] = res["ray_2_workers"][k] / res["local"][k]
        result[kind] = res
        print(kind, res, flush=True)
    result["redis_memory"] = redis_bytes_per_item()
    result["load_after"] = _uptime()
    save("ray", result)


if __name__ == "__main__":
    main()
