"""Text embeddings: recfeast TextEncoder (float32 and bf16) vs sentence-transformers encode(), same
model, texts, batch size and threads.

The three paths run interleaved in each round (so a change in the machine's load hits all three), the
items/s of each is the median over ``--rounds`` rounds, and the load average is recorded per round.
Agreement: min and mean cosine of each path's embedding to sentence-transformers' float32 one.
The GEMM ceiling (a 2048x2048 float32 and bfloat16 matmul on the same threads) is measured in the same
run, so items/s can be read against what the cores can do.

Run: .venv/bin/python -m bench.bench_text --data-dir ../shared/data/movielens-100k
"""

import argparse
import statistics
import time

import numpy as np


def _gemm_gflops(dtype, n: int = 2048, repeat: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="first N texts only (0: all)")
    ap.add_argument("--no-next-item", action="store_true",
                    help="skip the next-item Recall/NDCG@10 comparison of bf16 against fp32")
    args = ap.parse_args()

    import torch
    from bench.common import interleaved_rates, save
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean
    from recfeast.encoders import TextEncoder
    from recfeast.encoders.text import cpu_has_bf16
    from recfeast.entities import item_text
    from sentence_transformers import SentenceTransformer

    cat = clean(read_catalog(args.data_dir))
    if args.limit:
        cat.items = cat.items.head(args.limit).reset_index(drop=True)
    texts = item_text(cat.items)
    paths = {"recfeast_fp32": TextEncoder()}
    if cpu_has_bf16():
        paths["recfeast_bf16"] = TextEncoder(precision="bf16")
    st = SentenceTransformer(str(paths["recfeast_fp32"].path), device="cpu")
    encode = {name: (lambda enc=enc: enc.encode(texts, args.batch_size)) for name, enc in paths.items()}
    encode["sentence_transformers"] = lambda: st.encode(texts, batch_size=args.batch_size,
                                                       normalize_embeddings=True)
    for enc in paths.values():
        enc.encode(texts[:64])
    st.encode(texts[:64])

    rates, loads, emb = interleaved_rates(encode, len(texts), args.rounds)
    anchor = emb["sentence_transformers"]
    # Work per pass, to read items/s against the GEMM ceiling: tokens the model runs on (recfeast's
    # length-sorted batches padded to each batch's longest) times the linear layers' FLOPs per token
    # (per layer 2*(4*d*d + 2*d*f) for d=384, f=1536: 3.54 MFLOP; x6 layers = 21.2 MFLOP; attention
    # scores add 4*L*d per token per layer, counted too).
    enc0 = paths["recfeast_fp32"]
    lengths = np.sort([len(x) for x in enc0.tokenizer(texts, truncation=True, max_length=enc0.max_length)["input_ids"]])[::-1]
    cfg = enc0.model.config
    d, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    flops = 0.0
    for start in range(0, len(texts), args.batch_size):
        padded = int(lengths[start:start + args.batch_size].max())
        n_b = len(lengths[start:start + args.batch_size])
        flops += n_b * padded * layers * (2 * (4 * d * d + 2 * d * f) + 4 * padded * d)
    result = {
        "what": "item texts of MovieLens-100k (title. genres. overview tagline), all-MiniLM-L6-v2",
        "n_texts": len(texts), "batch_size": args.batch_size, "rounds": args.rounds,
        "torch_threads": torch.get_num_threads(), "load_avg_1min_per_round": loads,
        "tokens_per_text_mean": float(lengths.mean()), "gflop_per_pass": flops / 1e9,
        "gemm_gflops": {"fp32": _gemm_gflops(torch.float32),
                        "bf16": _gemm_gflops(torch.bfloat16) if cpu_has_bf16() else None},
        "paths": {},
    }
    for name in encode:
        cos = (emb[name] * anchor).sum(1)
        med = statistics.median(rates[name])
        result["paths"][name] = {
            "items_per_s_median": med, "items_per_s_rounds": rates[name],
            "ratio_over_sentence_transformers": med / statistics.median(rates["sentence_transformers"]),
            "achieved_gflops": flops / 1e9 * med / len(texts),
            "min_cosine_to_st_fp32": float(cos.min()), "mean_cosine_to_st_fp32": float(cos.mean())}
    if "recfeast_bf16" in emb and not args.no_next_item:
        # Next-item retrieval with each set of item embeddings (co-rating pairs, test from 1998-03-29):
        # does bf16 change what the embeddings are used for? Paired bootstrap interval of the difference.
        from bench.bench_quantized import _retrieval
        from recfeast.training.text_data import corating_pairs, split_pairs

        test = split_pairs(corating_pairs(cat.events), "1998-03-01", "1998-03-29")["test"]
        result["next_item_bf16_vs_fp32"] = _retrieval(emb["recfeast_fp32"], emb["recfeast_bf16"],
                                                      cat.items["item_id"].to_numpy(), test, cat.events,
                                                      name="bf16")
        print("next item", result["next_item_bf16_vs_fp32"], flush=True)
    save("text", result)


if __name__ == "__main__":
    main()
