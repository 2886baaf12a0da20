"""Text embeddings: recfeast TextEncoder vs sentence-transformers encode(), same model, texts, threads.

Run: .venv/bin/python bench/bench_text.py --data-dir ../shared/data/movielens-100k
"""

import argparse

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from bench.common import save, timed
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean
    from recfeast.encoders import TextEncoder
    from recfeast.entities import item_text
    from sentence_transformers import SentenceTransformer

    texts = item_text(clean(read_catalog(args.data_dir)).items)
    ours = TextEncoder()
    st = SentenceTransformer(str(ours.path), device="cpu")
    ours.encode(texts[:64]), st.encode(texts[:64])  # warm-up
    t_ours = timed(lambda: ours.encode(texts, args.batch_size), args.repeat)
    t_st = timed(lambda: st.encode(texts, batch_size=args.batch_size, normalize_embeddings=True), args.repeat)
    diff = float(np.abs(ours.encode(texts[:200]) - st.encode(texts[:200], normalize_embeddings=True)).max())
    save("text", {
        "what": "item texts of MovieLens-100k (title. genres. overview tagline), all-MiniLM-L6-v2",
        "n_texts": len(texts), "batch_size": args.batch_size,
        "recfeast_items_per_s": len(texts) / t_ours, "sentence_transformers_items_per_s": len(texts) / t_st,
        "ratio_recfeast_over_st": t_st / t_ours, "max_abs_diff_200": diff,
    })


if __name__ == "__main__":
    main()
