"""Int8 (dynamic quantisation) text encoder vs the full-precision TextEncoder: speed, size, agreement.

Anchor: the full-precision recfeast TextEncoder, same texts, same process, same thread count.
Speed: items/s over the 1,682 MovieLens item texts at 1 and 2 torch threads (batch 64, full and int8
runs interleaved, best of --repeat), and single-text latency (the serving case, batch 1).
Agreement: cosine per item between full and int8 embeddings of every item; overlap@10 of each item's
nearest neighbours by cosine; next-item Recall@10 / NDCG@10 (training.text_data, test pairs from
1998-03-29) with each set of embeddings, and their paired difference with a bootstrap interval.
The machine is shared: the load average is recorded around every timed block.

Run: .venv/bin/python -m bench.bench_quantized --data-dir ../shared/data/movielens-100k
"""

import argparse
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # "1 thread" means one thread, tokenizer included

import numpy as np


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cosine_stats(a: np.ndarray, b: np.ndarray, ids: np.ndarray) -> dict:
    cos = (a * b).sum(1)
    return {"min": float(cos.min()), "p1": float(np.percentile(cos, 1)), "p5": float(np.percentile(cos, 5)),
            "mean": float(cos.mean()), "argmin_item_id": int(ids[int(cos.argmin())])}


def _neighbours(emb: np.ndarray, k: int) -> np.ndarray:
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def _overlap(full_nn: np.ndarray, q_nn: np.ndarray) -> dict:
    k = full_nn.shape[1]
    per_item = np.array([len(set(a) & set(b)) / k for a, b in zip(full_nn, q_nn)])
    return {f"overlap@{k}_mean": float(per_item.mean()), f"overlap@{k}_min": float(per_item.min()),
            "top1_same": float((full_nn[:, 0] == q_nn[:, 0]).mean())}


def _retrieval(emb_full, emb_q, item_ids, test, events, seed=0, name="int8") -> dict:
    """Next-item Recall@10 / NDCG@10 of two embeddings of the same items and their paired difference
    (bootstrap over test pairs, 2,000 resamples, 95% interval); ``name`` labels the second one."""
    from recfeast.training.text_data import next_item_metrics

    f = next_item_metrics(emb_full, item_ids, test, events)
    q = next_item_metrics(emb_q, item_ids, test, events)
    d_ndcg = q["per_pair_ndcg"] - f["per_pair_ndcg"]
    d_hit = q["per_pair_hit"] - f["per_pair_hit"]
    rng = np.random.default_rng(seed)
    boot = rng.integers(0, len(d_ndcg), size=(2000, len(d_ndcg)))
    lo_n, hi_n = np.percentile(d_ndcg[boot].mean(1), [2.5, 97.5])
    lo_r, hi_r = np.percentile(d_hit[boot].mean(1), [2.5, 97.5])
    return {"pairs": f["pairs"], "full": {"recall@10": f["recall@10"], "ndcg@10": f["ndcg@10"]},
            name: {"recall@10": q["recall@10"], "ndcg@10": q["ndcg@10"]},
            "diff_recall@10": q["recall@10"] - f["recall@10"], "diff_recall@10_ci95": [float(lo_r), float(hi_r)],
            "diff_ndcg@10": q["ndcg@10"] - f["ndcg@10"], "diff_ndcg@10_ci95": [float(lo_n), float(hi_n)],
            "pairs_hit_changed": int((d_hit != 0).sum())}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--latency-texts", type=int, default=100)
    ap.add_argument("--limit", type=int, default=0, help="first N items only (a smoke run; 0 = all)")
    args = ap.parse_args()

    import torch

    from bench.common import percentiles_ms, save
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean
    from recfeast.encoders import TextEncoder
    from recfeast.encoders.quantized import (QuantizationConfig, QuantizedTextEncoder,
                                                         serialized_bytes, weight_bytes)
    from recfeast.entities import item_text
    from recfeast.training.text_data import corating_pairs, split_pairs

    cat = clean(read_catalog(args.data_dir))
    if args.limit:
        cat.items = cat.items.head(args.limit).reset_index(drop=True)
    texts = item_text(cat.items)
    ids = cat.items["item_id"].to_numpy()
    test = split_pairs(corating_pairs(cat.events), "1998-03-01", "1998-03-29")["test"]

    full = TextEncoder()
    variants = {
        "int8": QuantizationConfig(),  # the recfeast default: per-channel weights, 8-bit activations
        "int8_torch_defaults": QuantizationConfig(weight_scheme="per_tensor", reduce_range=True),
        "int8_with_embeddings": QuantizationConfig(modules=("Linear", "Embedding")),
    }
    quant = {k: QuantizedTextEncoder.from_encoder(full, c) for k, c in variants.items()}
    encoders = {"full": full, **quant}

    result = {"limit": args.limit or None, "what": "MovieLens-100k item texts (title. genres. overview tagline), all-MiniLM-L6-v2: full float32 "
                      "TextEncoder (anchor) vs torch dynamic int8 quantisation of its linear layers",
              "n_texts": len(texts), "batch_size": args.batch_size, "repeat": args.repeat,
              "tokenizers_parallelism": os.environ["TOKENIZERS_PARALLELISM"],
              "quantized_engine": torch.backends.quantized.engine,
              "models": {k: {"model_id": e.model_id, "serialized_mb": serialized_bytes(e.model) / 1e6,
                             "weights_in_memory_mb": weight_bytes(e.model) / 1e6} for k, e in encoders.items()},
              "configs": {k: {**c.__dict__, "modules": list(c.modules)} for k, c in variants.items()}}

    # Speed: interleave the encoders in each repeat so load changes hit them alike; best of repeats.
    speed = {}
    emb = {}
    for n in [int(x) for x in args.threads.split(",")]:
        torch.set_num_threads(n)
        for e in encoders.values():
            e.encode(texts[:64], args.batch_size)  # warm-up at this thread count
        best = {k: float("inf") for k in encoders}
        load_before = _load()
        for _ in range(args.repeat):
            for k, e in encoders.items():
                if k == "int8_with_embeddings" and n != max(int(x) for x in args.threads.split(",")):
                    continue  # same linear kernels as int8; timed once, at the largest thread count
                t = time.perf_counter()
                out = e.encode(texts, args.batch_size)
                best[k] = min(best[k], time.perf_counter() - t)
                emb.setdefault(k, out)
        speed[f"{n}_threads"] = {
            "items_per_s": {k: len(texts) / v for k, v in best.items() if v < float("inf")},
            "speedup_vs_full": {k: best["full"] / v for k, v in best.items() if v < float("inf")},
            "load_avg_before": load_before, "load_avg_after": _load()}
        print(n, "threads", speed[f"{n}_threads"], flush=True)

    # Serving: one text per call (batch 1), the full model and the default int8, at 1 thread.
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), size=args.latency_texts, replace=False)]
    lat = {}
    load_before = _load()
    for k in ("full", "int8"):
        e = encoders[k]
        e.encode(sample[:5], 1)
        times = []
        for s in sample:
            t = time.perf_counter()
            e.encode([s], 1)
            times.append(time.perf_counter() - t)
        lat[k] = percentiles_ms(times)
    lat["p50_speedup"] = lat["full"]["p50_ms"] / lat["int8"]["p50_ms"]
    lat.update(threads=1, load_avg_before=load_before, load_avg_after=_load())
    print("latency", lat, flush=True)

    # Batch dependence of int8 (activation scale per batch): every item alone vs in batches of 64.
    torch.set_num_threads(max(int(x) for x in args.threads.split(",")))
    t = time.perf_counter()
    int8_alone = quant["int8"].encode(texts, 1)
    t_alone = time.perf_counter() - t
    full_alone = full.encode(texts[:200], 1)

    agreement = {}
    nn_full = _neighbours(emb["full"], 10)
    for k in quant:
        agreement[k] = {"cosine": _cosine_stats(emb["full"], emb[k], ids),
                        **_overlap(nn_full, _neighbours(emb[k], 10)),
                        "next_item": _retrieval(emb["full"], emb[k], ids, test, cat.events)}
    agreement["int8_batch1"] = {"cosine": _cosine_stats(emb["full"], int8_alone, ids),
                                **_overlap(nn_full, _neighbours(int8_alone, 10)),
                                "next_item": _retrieval(emb["full"], int8_alone, ids, test, cat.events)}
    result.update(
        speed=speed, single_text_latency=lat, agreement=agreement,
        batch_dependence={
            "int8_batch64_vs_batch1_cosine": _cosine_stats(emb["int8"], int8_alone, ids),
            "full_batch64_vs_batch1_max_abs_diff_200": float(np.abs(emb["full"][:200] - full_alone).max()),
            "int8_batch1_items_per_s": len(texts) / t_alone},
    )
    save("quantized", result)


if __name__ == "__main__":
    main()
