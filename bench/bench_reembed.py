"""Re-embedding cost: a full catalog vs an unchanged one vs one edited overview.

    python -m bench.bench_reembed [--data-dir ../shared/data/movielens-100k]

Runs the main job's embeddings part (text + posters, no Feast) three times in a throwaway
repository: cold (empty embedding cache: every item computed), unchanged (every embedding from the
cache), and after editing one overview in a canonical copy of the catalog (exactly one text
embedding computed). Reports seconds per encode stage and computed/reused counts.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.common import save

ROOT = Path(__file__).resolve().parents[1]


def _canonical_copy(data_dir: Path, dst: Path) -> None:
    """The catalog in recfeast's canonical files, so one overview can be edited."""
    from recfeast.adapters.movielens import read

    raw = read(data_dir)
    dst.mkdir(parents=True)
    items = raw.items.drop(columns="source").copy()
    items["image_path"] = [None if p is None else str(data_dir / p) for p in items["image_path"]]
    items["item_id"] = items["item_id"].astype("int64")
    items.to_parquet(dst / "items.parquet", index=False)
    raw.events.drop(columns="source").to_csv(dst / "events.csv", index=False)
    raw.users.drop(columns="source").to_csv(dst / "users.csv", index=False)


def main() -> None:
    import pandas as pd

    from recfeast.materialize.job import JobConfig, run

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "movielens-100k"))
    args = ap.parse_args()
    out = {"command": "python -m bench.bench_reembed", "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        _canonical_copy(Path(args.data_dir), data)
        repo = tmp / "repo"
        repo.mkdir()
        for name in ("feature_store.yaml", "feature_definitions.py"):
            shutil.copy(ROOT / "feature_repo" / name, repo / name)
        cfg = dict(data_dir=data, repo=repo, apply=False, progress=False, parts=("embeddings",))
        for label in ("cold", "unchanged", "one_overview_edited"):
            if label == "one_overview_edited":
                items = pd.read_parquet(data / "items.parquet")
                items.loc[items["item_id"] == 50, "description"] = "Edited: a farm boy joins the rebellion."
                items.to_parquet(data / "items.parquet", index=False)
            s = run(JobConfig(**cfg))
            out["runs"][label] = {"encode_text_s": s.seconds["encode text"], "encode_images_s": s.seconds["encode images"],
                                  "total_s": round(sum(s.seconds.values()), 2), "embeddings": s.embeddings}
            print(label, out["runs"][label], flush=True)
    cold, warm = out["runs"]["cold"], out["runs"]["unchanged"]
    out["speedup_unchanged_vs_cold"] = round((cold["encode_text_s"] + cold["encode_images_s"])
                                             / max(warm["encode_text_s"] + warm["encode_images_s"], 1e-9), 1)
    save("reembed", out)


if __name__ == "__main__":
    main()
