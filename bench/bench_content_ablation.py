"""Does content help or hurt ranking on a sparse catalog, and does regularisation change that?

Builds the training set and the ranking candidates once (as ``recfeast train`` does), then trains the
behaviour-only model and the model with the text/image/sequence embeddings under several
``embedding_dropout`` settings, seeds 0..S-1, and reports NDCG@10 / HR@10 / AUC with the paired
bootstrap lift over behaviour only (training.evaluate) and most-popular as of each moment.

    python -m bench.bench_content_ablation --repo-path REPO --data-dir DIR --dropouts 0,0.5 --seeds 2

Writes ``<out>/content_ablation.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo-path", required=True)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--dropouts", default="0,0.5")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--max-epochs", type=int, default=30)
    ap.add_argument("--out", default="bench/results/content_ablation")
    args = ap.parse_args()

    from recfeast import config, entities as F
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean
    from recfeast.ranking.features import FeatureSpec
    from recfeast.spec import load_spec, spec_path
    from recfeast.store import feature_store
    from recfeast.training.config import TrainConfig, data_split_dates
    from recfeast.training.dataset import get_training_set
    from recfeast.training.evaluate import auc, paired_bootstrap, per_user_gains, positive_ranks, rank_metrics
    from recfeast.training.examples import labelled_examples, sample_unrated
    from recfeast.training.task import _predict, fit_model
    from recfeast.views import field_roles

    t0 = time.time()
    repo = config.repo_path(args.repo_path)
    spec = load_spec(spec_path(repo))
    roles = field_roles(spec)
    data = clean(read_catalog(Path(args.data_dir), spec))
    ev = data.events
    avail = pd.Series(F.item_available_from(data.items, ev).to_numpy(), index=data.items["item_id"])
    t1, t2 = data_split_dates(spec, ev["event_timestamp"])
    cfg = TrainConfig(repo=str(repo), data_dir=args.data_dir, val_start=str(t1.date()), test_start=str(t2.date()),
                      max_epochs=args.max_epochs)
    ex = labelled_examples(ev, avail, cfg, spec, (t1, t2))
    store = feature_store(repo)
    tset, _ = get_training_set(store, ex, cfg.feature_service)
    pos = ex[(ex.split == "test") & (ex.label == 1)].groupby("user_id").head(1)
    pos = pos.sample(n=min(300, len(pos)), random_state=0)
    anchors = pos[["user_id", "item_id", "event_timestamp", "request_ts"]].reset_index(drop=True)
    negs = sample_unrated(ev, anchors, 99, avail, 1, exclude_future=True)
    cands = pd.concat([anchors.assign(anchor=np.arange(len(anchors)), label=1), negs.assign(label=0)], ignore_index=True)
    cands = cands[cands.anchor.isin(negs.anchor.unique())].reset_index(drop=True)
    cset, _ = get_training_set(store, cands, cfg.feature_service)
    split = {s: tset[tset.split == s].reset_index(drop=True) for s in ("train", "val", "test")}
    g, p = cset.anchor.to_numpy(), cset.label.to_numpy() == 1
    print(f"data ready in {time.time() - t0:.0f} s: {len(tset)} rows, {cands.anchor.nunique()} ranked users", flush=True)

    present = [x for x in ("text", "image", "sequence") if any(f.group == x for f in roles.values())]
    variants = [("behavior only", ("behavior",), 0.0)]
    variants += [(f"all, embedding dropout {d:g}", ("behavior", *present), d) for d in map(float, args.dropouts.split(","))]
    rows, gains = [], {}
    pop = pd.to_numeric(cset.popularity, errors="coerce").fillna(0).to_numpy()
    gains["most popular"] = per_user_gains(positive_ranks(g, p, pop)[1], 10)
    rows.append({"variant": "most popular", "seed": None, **rank_metrics(g, p, pop, 10)})
    for name, groups, drop in variants:
        for seed in range(args.seeds):
            c = replace(cfg, groups=groups, embedding_dropout=drop, seed=seed)
            fs = FeatureSpec.fit(split["train"], groups, roles)
            arr = {s: fs.transform(f) for s, f in split.items()}
            model, hist = fit_model(c, fs, arr["train"], split["train"].label.to_numpy(), arr["val"],
                                    split["val"].label.to_numpy(), log=lambda *_: None)
            scores = _predict(model, fs.transform(cset))
            r = rank_metrics(g, p, scores, 10)
            gains.setdefault(name, []).append(per_user_gains(positive_ranks(g, p, scores)[1], 10))
            rows.append({"variant": name, "seed": seed, **r, "epochs": len(hist),
                         "auc": auc(split["test"].label.to_numpy(), _predict(model, arr["test"]))})
            print(rows[-1], flush=True)
    base = np.mean([x[0] for x in gains["behavior only"]], axis=0)
    summary = []
    for name, _, _ in variants:
        nd = np.mean([x[0] for x in gains[name]], axis=0)
        summary.append({"variant": name, "ndcg@10": float(nd.mean()),
                        "lift_vs_behavior_only": paired_bootstrap(nd, base),
                        "lift_vs_most_popular": paired_bootstrap(nd, gains["most popular"][0])})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": "python -m bench.bench_content_ablation " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
           "split": [str(t1.date()), str(t2.date())], "runs": rows, "summary": summary,
           "most_popular_ndcg@10": float(gains["most popular"][0].mean()), "seconds": round(time.time() - t0)}
    (out / "content_ablation.json").write_text(json.dumps(res, indent=2, default=str))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    names = ["most popular"] + [s["variant"] for s in summary]
    vals = [res["most_popular_ndcg@10"]] + [s["ndcg@10"] for s in summary]
    ax.barh(names, vals, color="#4477aa")
    ax.set_xlim(0, max(vals) * 1.15)
    ax.set_xlabel("test NDCG@10 (mean over seeds)")
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "content_ablation.png", dpi=120)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
