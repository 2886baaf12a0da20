"""Image embeddings: items/s of ImageEncoder (EfficientNet-Lite0) on the MovieLens posters, today's
options against the landed path, interleaved per round in one run.

Paths: ``before`` (the anchor: float32, contiguous NCHW, images decoded in the calling thread between
batches, i.e. the encoder as it was before issue 15), ``fp32`` (channels-last, decode in 2 threads ahead
of the model), ``bf16`` (the same under ``torch.autocast(bfloat16)``, on CPUs with avx512_bf16/amx_bf16).
items/s is the median over ``--rounds``; agreement is the min/mean cosine to the anchor's embedding;
the load average is recorded per round.

Run: .venv/bin/python -m bench.bench_image --data-dir ../shared/data/movielens-100k
"""

import argparse
import statistics
from pathlib import Path

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch
    from bench.common import interleaved_rates, save
    from recfeast.encoders import ImageEncoder
    from recfeast.encoders.text import cpu_has_bf16

    paths = sorted(Path(args.data_dir, "posters").glob("*.jpg"))[: args.n]
    encoders = {"before": ImageEncoder(decode_workers=0, channels_last=False), "fp32": ImageEncoder()}
    if cpu_has_bf16():
        encoders["bf16"] = ImageEncoder(precision="bf16")
    for enc in encoders.values():
        enc.encode(paths[:8])
    fns = {name: (lambda enc=enc: enc.encode(paths, args.batch_size).embeddings) for name, enc in encoders.items()}
    rates, loads, emb = interleaved_rates(fns, len(paths), args.rounds, unit="images")
    anchor = emb["before"]
    result = {"what": "MovieLens posters (92x138 JPEG) -> resize 256, crop 224, EfficientNet-Lite0 1280-d",
              "n_images": len(paths), "batch_size": args.batch_size, "rounds": args.rounds,
              "torch_threads": torch.get_num_threads(), "load_avg_1min_per_round": loads, "paths": {}}
    for name, enc in encoders.items():
        cos = (emb[name] * anchor).sum(1)
        med = statistics.median(rates[name])
        result["paths"][name] = {"model_id": enc.model_id, "items_per_s_median": med, "items_per_s_rounds": rates[name],
                                 "ratio_over_before": med / statistics.median(rates["before"]),
                                 "min_cosine_to_before": float(cos.min()), "mean_cosine_to_before": float(cos.mean())}
    save("image", result)


if __name__ == "__main__":
    main()
