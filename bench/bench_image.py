"""Image embeddings: items/s of ImageEncoder (EfficientNet-Lite0) on the MovieLens posters.

Run: .venv/bin/python bench/bench_image.py --data-dir ../shared/data/movielens-100k
"""

import argparse
from pathlib import Path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    from bench.common import save, timed
    from recfeast.encoders import ImageEncoder

    paths = sorted(Path(args.data_dir, "posters").glob("*.jpg"))[: args.n]
    enc = ImageEncoder()
    enc.encode(paths[:8])
    t = timed(lambda: enc.encode(paths, args.batch_size))
    save("image", {"what": "MovieLens posters (92x138 JPEG) -> 224x224, EfficientNet-Lite0 1280-d",
                   "n_images": len(paths), "batch_size": args.batch_size, "items_per_s": len(paths) / t})


if __name__ == "__main__":
    main()
