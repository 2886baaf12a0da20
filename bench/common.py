"""Helpers shared by the benchmarks: machine description, timing, result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    """One line: CPU model, cores, memory, Python, torch threads."""
    cpu = platform.processor() or "unknown cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    return (f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB, Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads, CPU)")


def percentiles_ms(seconds: list[float]) -> dict:
    """p50/p90/p99/mean of a list of durations in seconds, as milliseconds."""
    a = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(a, 50)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "n": int(a.size)}


def timed(fn, repeat: int = 1) -> float:
    """Best wall-clock seconds of ``repeat`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def save(name: str, result: dict) -> Path:
    """Write ``bench/results/<name>.json`` with the date, machine and git commit added."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    payload = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
               "commit": commit, **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))
    return path


def raw_hmget(client, project: str):
    """The raw-Redis floor of an online lookup: a function ``(user_id, item_ids) -> replies`` that
    sends, in one redis-py pipeline, one HMGET per entity of exactly the fields ``client`` (a Redis
    :class:`recfeast.serving.sdk.OnlineFeatureClient`) reads, on the client's own connection pool;
    nothing is decoded."""
    from recfeast.layout import entity_key_bytes

    r, suffix = client.reader.client, project.encode()
    by_key: dict[str, list] = {}
    for v in client.views:
        by_key.setdefault(v.join_key, []).extend([*v.fields, v.ts_field])

    def read(u, its):
        with r.pipeline(transaction=False) as p:
            p.hmget(entity_key_bytes("user_id", u) + suffix, by_key["user_id"])
            for i in its:
                p.hmget(entity_key_bytes("item_id", i) + suffix, by_key["item_id"])
            return p.execute()

    return read


def interleaved_rates(fns: dict, n_items: int, rounds: int, unit: str = "items") -> tuple[dict, list, dict]:
    """Run each of ``fns`` (name -> ``() -> (n_items, d)`` embeddings) once per round, the paths
    interleaved so that machine noise hits them alike, printing each pass.

    Returns:
        ``(rates, loads, last)``: name -> ``n_items`` / seconds of each round (``unit``/s), the
        1-minute load average at the start of each round, name -> the last pass's output as
        float32 ``(n_items, d)``.
    """
    rates = {name: [] for name in fns}
    loads, last = [], {}
    for r in range(rounds):
        loads.append(round(os.getloadavg()[0], 2))
        for name, fn in fns.items():
            t = time.perf_counter()
            last[name] = np.asarray(fn(), dtype=np.float32)
            rates[name].append(n_items / (time.perf_counter() - t))
            print(f"round {r} {name}: {rates[name][-1]:.1f} {unit}/s (load {os.getloadavg()[0]:.2f})", flush=True)
    return rates, loads, last

