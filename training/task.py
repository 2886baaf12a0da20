"""The training task: examples -> point-in-time set -> ranking model -> evaluation, ablation, plots.

Reads top to bottom as numbered steps (see :func:`train`). ``recfeast train`` calls :func:`train`.
"""

from __future__ import annotations

import json
import resource
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recfeast.training.config import TrainConfig
from recfeast.training.evaluate import auc, log_loss, paired_bootstrap, per_user_gains, positive_ranks, rank_metrics
from recfeast.ranking.features import FeatureSpec
from recfeast.ranking.checkpoint import load_checkpoint, save_checkpoint  # noqa: F401 (re-exported)
from recfeast.ranking.model import RankingModel
from recfeast.training import tracking

PROTOCOL = ("temporal split (train < {t1} <= validation < {t2} <= test); positives = {pos}; {neg} sampled "
            "negatives per positive at the same timestamp (items the user had no event with); ranking: first "
            "test-period positive of each of up to {users} users ranked against {n} catalog items the user never "
            "touched, features as of that moment (sampled protocol, NCF-style)")


def positives_text(spec, min_value=None) -> str:
    """Human-readable positive rule of a catalog spec, e.g. ``rate events with value >= 4``."""
    parts = []
    for name, t in spec.events.types.items():
        rule = t.positive_rule
        if rule is None:
            continue
        thr = min_value if (min_value is not None and t.value is not None) else rule.min_value
        parts.append(f"{name} events" + (f" with value >= {thr:g}" if thr is not None else ""))
    return " or ".join(parts)


def _tensors(arrays: dict[str, np.ndarray], idx=None) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v if idx is None else v[idx]) for k, v in arrays.items()}


def _predict(model: RankingModel, arrays: dict[str, np.ndarray], batch: int = 8192) -> np.ndarray:
    model.eval()
    n = len(arrays["dense"])
    out = np.empty(n, np.float32)
    with torch.inference_mode(), warnings.catch_warnings():
        # the vector inputs are read-only views of the training set's Arrow buffers; the model only reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for s in range(0, n, batch):
            idx = slice(s, s + batch)
            out[idx] = torch.sigmoid(model({k: torch.from_numpy(v[idx]) for k, v in arrays.items()})).numpy()
    return out


def fit_model(cfg: TrainConfig, spec: FeatureSpec, train: dict, y_train: np.ndarray, val: dict,
              y_val: np.ndarray, log=print, on_epoch=None) -> tuple[RankingModel, list[dict]]:
    """Train with BCE and Adam; stop when validation log loss has not improved for ``cfg.patience``
    epochs and return the best epoch's weights with the per-epoch history (``on_epoch(row)`` is
    called with each history row)."""
    torch.manual_seed(cfg.seed)
    dims = {k: v.shape[1] for k, v in train.items() if k != "dense"}
    model = RankingModel(train["dense"].shape[1], dims, cfg.hidden, cfg.dropout,
                         embedding_dropout=cfg.embedding_dropout)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    yt = torch.from_numpy(y_train.astype(np.float32))
    rng = np.random.default_rng(cfg.seed)
    best, best_state, history, stale = float("inf"), None, [], 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        perm = rng.permutation(len(y_train))
        total = 0.0
        for s in range(0, len(perm), cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            loss = loss_fn(model(_tensors(train, idx)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        val_loss = log_loss(y_val, _predict(model, val))
        history.append({"epoch": epoch, "train_loss": total / len(perm), "val_loss": val_loss})
        log(f"    epoch {epoch:2d}  train {total / len(perm):.4f}  val {val_loss:.4f}")
        if on_epoch is not None:
            on_epoch(history[-1])
        if val_loss < best - 1e-4:
            best, stale = val_loss, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:  # None only when validation loss was never finite
        model.load_state_dict(best_state)
    return model.eval(), history


def split_rows(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The ``train`` / ``val`` / ``test`` rows of a training set. Examples are ordered by time, so each
    split is one run of rows and comes back as a slice: a view of the set's buffers, not a copy
    (a split whose rows are scattered is gathered into a copy)."""
    split = frame["split"].to_numpy()
    out = {}
    for name in ("train", "val", "test"):
        idx = np.flatnonzero(split == name)
        contiguous = len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
        out[name] = frame.iloc[idx[0]:idx[-1] + 1] if contiguous and len(idx) else frame.iloc[idx]
    return out


def peak_rss_gb() -> float:
    """This process' peak resident memory so far, GB (10^9 bytes; Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def _plots(out: Path, histories: dict, ablation: pd.DataFrame, k: int, intervals: dict | None = None) -> None:
    """``training_curves.png`` (train and validation loss per variant, the kept epoch marked) and
    ``ablation.png`` (test AUC, NDCG@k, HR@k per variant from 0, with 95% bootstrap intervals of the
    ranking metrics over users when ``intervals`` = ``{variant: {metric: (low, high)}}``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name, hist in histories.items():
        ep = [h["epoch"] for h in hist]
        line = ax[0].plot(ep, [h["train_loss"] for h in hist], label=name)[0]
        ax[1].plot(ep, [h["val_loss"] for h in hist], label=name, color=line.get_color())
        if hist:   # the epoch whose weights were kept: the lowest validation loss
            best = min(hist, key=lambda h: h["val_loss"])
            ax[1].plot([best["epoch"]], [best["val_loss"]], marker="o", color=line.get_color(), markersize=6)
    from matplotlib.ticker import MaxNLocator

    for a, t in zip(ax, ("train BCE", "validation log loss (dot: kept epoch)")):
        a.set_xlabel("epoch"), a.set_title(t), a.grid(alpha=0.3), a.legend(fontsize=8)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(1, 3, figsize=(13, 4))
    for a, col in zip(ax, ("auc", f"ndcg@{k}", f"hr@{k}")):
        vals = pd.to_numeric(ablation[col], errors="coerce").fillna(0.0).to_numpy()
        err = None
        if intervals and col != "auc":
            lo = [vals[i] - intervals.get(v, {}).get(col, (vals[i], vals[i]))[0] for i, v in enumerate(ablation["variant"])]
            hi = [intervals.get(v, {}).get(col, (vals[i], vals[i]))[1] - vals[i] for i, v in enumerate(ablation["variant"])]
            err = [np.maximum(lo, 0), np.maximum(hi, 0)]
        a.bar(range(len(vals)), vals, color="#4477aa", yerr=err, capsize=3, ecolor="#333333")
        a.set_title(f"test {col}" + (" (95% CI over users)" if err is not None else ""))
        a.set_xticks(range(len(ablation)), ablation["variant"], rotation=35, ha="right", fontsize=8)
        a.set_ylim(0, min(1.0, float(vals.max()) * 1.15 + 0.02))
        for i, v in enumerate(vals):
            a.text(i, v / 2, f"{v:.3f}", ha="center", va="center", fontsize=8, color="white")
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=120)
    plt.close(fig)


@tracking.tracked("ranking")
def train(cfg: TrainConfig, log=print) -> dict:
    """Run the whole task; returns the metrics dict (also written to ``<out_dir>/metrics.json``).

    Steps: 1 events and labels, 2 point-in-time training set, 3 ranking candidates and their
    features, 4 fit the feature transform, 5 train the configured model, 6 evaluate it and the
    baselines, 7 ablation, 8 save checkpoint, metrics, tables and plots.

    Raises:
        ConfigError / DataError / StoreError from the steps (bad settings, data or store).
    """
    from recfeast import config
    from recfeast import entities as F
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean
    from recfeast.spec import load_spec, spec_path
    from recfeast.store import feature_store
    from recfeast.training.config import data_split_dates, split_dates
    from recfeast.views import field_roles
    from recfeast.training.dataset import get_training_set, save_entity_rows, save_training_set
    from recfeast.io import write_json
    from recfeast.training.examples import labelled_examples, sample_unrated

    cfg.validate()
    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    repo = config.repo_path(cfg.repo)
    store = feature_store(repo)
    tracking.current().start(cfg, {"recfeast.feature_service": cfg.feature_service}, out, repo)

    # 1. events and labels --------------------------------------------------------------------
    catalog_spec = load_spec(spec_path(repo))
    roles = field_roles(catalog_spec)
    from recfeast.eventlog import with_logged_events

    log(f"1. examples: reading events from {config.data_dir(cfg.data_dir)}")
    data = clean(read_catalog(config.data_dir(cfg.data_dir), catalog_spec))
    # the events the feature tables are built from: the raw files plus the ingested event log
    events = with_logged_events(data.events, data.items, repo, data.quarantine) if catalog_spec.realtime else data.events
    available = pd.Series(F.item_available_from(data.items, events).to_numpy(), index=data.items["item_id"])
    if cfg.val_start is not None:
        t1, t2 = split_dates(cfg.val_start, cfg.test_start)
    else:
        t1, t2 = data_split_dates(catalog_spec, events["event_timestamp"])
    cfg = replace(cfg, val_start=str(t1.date()), test_start=str(t2.date()))
    examples = labelled_examples(events, available, cfg, catalog_spec, (t1, t2))
    log(f"1. examples: {len(examples)} rows ({positives_text(catalog_spec, cfg.positive_min_value)} are positives), "
        + ", ".join(f"{s} {n}" for s, n in examples.split.value_counts().items()) + f"; split at {t1.date()} / {t2.date()}")

    # 2. point-in-time training set -------------------------------------------------------------
    def progress(step, what):
        t0 = time.perf_counter()

        def report(done, total):
            log(f"{step}. {what}: {done}/{total} rows joined ({time.perf_counter() - t0:.0f} s, peak RSS {peak_rss_gb():.2f} GB)")
        return report

    tset, info = get_training_set(store, examples, cfg.feature_service,
                                  allow_values_created_later=cfg.allow_values_created_later,
                                  progress=progress(2, "training set"))
    if info.null_share and min(info.null_share.values()) == 1.0:
        from recfeast.errors import DataError
        raise DataError(
            "every feature is null for every example: the tables have no value available (created) before the "
            f"examples' times (up to {info.time_range[1]}); rebuild them with `recfeast materialize` (created_timestamp "
            "is then each value's availability time), or, knowingly leaking, --allow-values-created-later")
    # what a feature store user keeps of a training set: its entity rows (keys, times, labels) and
    # provenance; the service rebuilds the joined set from them (values created later stay hidden).
    # The joined set itself (~8 KB a row with the vectors) only when asked.
    save_entity_rows(examples, info, out / "training_entities.parquet")
    if cfg.keep_training_set:
        save_training_set(tset, info, out / "training_set.parquet")
    log(f"2. training set: {info.rows} rows, {len(info.features)} features, vectors {info.vectors}, "
        f"{info.seconds:.1f} s; models {info.model_ids}")

    # 3. ranking candidates: first test positive per user vs cfg.eval_negatives never-rated items --
    test_pos = examples[(examples.split == "test") & (examples.label == 1)].groupby("user_id").head(1)
    if cfg.eval_max_users:
        test_pos = test_pos.sample(n=min(cfg.eval_max_users, len(test_pos)), random_state=cfg.seed)
    anchors = test_pos[["user_id", "item_id", "event_timestamp", "request_ts"]].reset_index(drop=True)
    negs = sample_unrated(events, anchors, cfg.eval_negatives, available, cfg.seed + 1, exclude_future=True)
    cands = pd.concat([anchors.assign(anchor=np.arange(len(anchors)), label=1), negs.assign(label=0)], ignore_index=True)
    cands = cands[cands.anchor.isin(negs.anchor.unique())].reset_index(drop=True)
    if cands.empty:
        from recfeast.errors import ConfigError
        raise ConfigError(f"no test-period user has {cfg.eval_negatives} never-touched catalog items to rank against: "
                          "lower eval_negatives (--eval-negatives) or move test_start")
    cset, _ = get_training_set(store, cands, cfg.feature_service,
                               allow_values_created_later=cfg.allow_values_created_later,
                               progress=progress(3, "ranking candidates"))
    log(f"3. ranking candidates: {cands.anchor.nunique()} users x {cfg.eval_negatives + 1} items")

    # 4-6. fit transform, train, evaluate (for every variant of the ablation) --------------------
    split = split_rows(tset)
    present = [g for g in ("text", "image", "sequence") if any(f.group == g for f in roles.values())]
    groups_all = tuple(g for g in cfg.groups if g == "behavior" or g in present)
    variants = {"behavior only": ("behavior",), **{f"+ {g}": ("behavior", g) for g in present}, "all": groups_all}
    if not cfg.ablation:
        variants = {"all": groups_all}
    results, histories, models, per_user = [], {}, {}, {}
    for name, groups in variants.items():
        log(f"4-6. model '{name}' (groups: {', '.join(groups)}): fitting the transform on {len(split['train'])} rows")
        spec = FeatureSpec.fit(split["train"], groups, roles)
        arrays = {s: spec.transform(f, indexed=True) for s, f in split.items()}
        log(f"    inputs: dense {arrays['train']['dense'].shape[1]}, "
            + ", ".join(f"{c} {spec.dims[c]}" for c in spec.vectors) + f"; training up to {cfg.max_epochs} epochs "
            f"(peak RSS {peak_rss_gb():.2f} GB)")
        model, hist = fit_model(replace(cfg, groups=groups), spec, arrays["train"], split["train"].label.to_numpy(),
                                arrays["val"], split["val"].label.to_numpy(), log=log,
                                on_epoch=lambda row, name=name: tracking.current().log_epoch(name, row["epoch"], row))
        p_test = _predict(model, arrays["test"])
        y_test = split["test"].label.to_numpy()
        cand_scores = _predict(model, spec.transform(cset, indexed=True))
        rm = rank_metrics(cset.anchor.to_numpy(), cset.label.to_numpy() == 1, cand_scores, cfg.k)
        per_user[name] = per_user_gains(positive_ranks(cset.anchor.to_numpy(), cset.label.to_numpy() == 1,
                                                       cand_scores)[1], cfg.k)
        results.append({"variant": name, "groups": list(groups), "auc": auc(y_test, p_test),
                        "log_loss": log_loss(y_test, p_test), **rm, "epochs": len(hist)})
        histories[name], models[name] = hist, (model, spec)
        del arrays
        log(f"    '{name}': test AUC {results[-1]['auc']:.4f}, NDCG@{cfg.k} {rm[f'ndcg@{cfg.k}']:.4f} "
            f"after {len(hist)} epochs")
    pop_test = pd.to_numeric(split["test"].popularity, errors="coerce").fillna(0).to_numpy()
    pop_rank = pd.to_numeric(cset.popularity, errors="coerce").fillna(0).to_numpy()
    results.insert(0, {"variant": "most popular (as of time)", "groups": [], "auc": auc(split["test"].label.to_numpy(), pop_test),
                       "log_loss": None, **rank_metrics(cset.anchor.to_numpy(), cset.label.to_numpy() == 1, pop_rank, cfg.k),
                       "epochs": 0})
    ablation = pd.DataFrame(results)

    # 8. save ---------------------------------------------------------------------------------
    model, spec = models["all"]
    protocol = PROTOCOL.format(t1=cfg.val_start, t2=cfg.test_start, pos=positives_text(catalog_spec, cfg.positive_min_value),
                               neg=cfg.negatives_per_positive,
                               users=cfg.eval_max_users or "all", n=cfg.eval_negatives)
    best = next(r for r in results if r["variant"] == "all")
    behavior = next((r for r in results if r["variant"] == "behavior only"), None)
    metrics = {
        "protocol": protocol, "val_start": cfg.val_start, "test_start": cfg.test_start,
        "rows": info.rows_by_split, "training_set": asdict(info), "test": best,
        "lift_over_behavior_only": None if behavior is None else {
            "auc": best["auc"] - behavior["auc"],
            f"ndcg@{cfg.k}": paired_bootstrap(per_user["all"][0], per_user["behavior only"][0], seed=cfg.seed),
            f"hr@{cfg.k}": paired_bootstrap(per_user["all"][1], per_user["behavior only"][1], seed=cfg.seed)},
        "ablation": results, "history": histories, "seconds": round(time.perf_counter() - t_start, 1),
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }
    normalization = json.loads((config.tables_dir(repo) / "normalization.json").read_text())
    selection = json.loads((config.tables_dir(repo) / "feature_selection.json").read_text())
    save_checkpoint(out / "ranking_model.pt", model, cfg, spec, info.features, normalization, best,
                    model_ids=info.model_ids, feature_selection=selection)
    write_json(out / "metrics.json", metrics)
    cols = ["variant", "auc", "log_loss", f"ndcg@{cfg.k}", f"hr@{cfg.k}", "users", "epochs"]
    table = ablation[cols].to_markdown(index=False, floatfmt=".4f")
    (out / "ablation.md").write_text(f"# Ranking ablation (test period from {cfg.test_start})\n\nProtocol: {protocol}\n\n{table}\n")
    pop_gains = per_user_gains(positive_ranks(cset.anchor.to_numpy(), cset.label.to_numpy() == 1, pop_rank)[1], cfg.k)
    intervals = {}
    for name, (nd, hit) in [("most popular (as of time)", pop_gains), *per_user.items()]:
        cis = {m: paired_bootstrap(g, np.zeros_like(g), seed=cfg.seed)["ci95"] for m, g in
               ((f"ndcg@{cfg.k}", nd), (f"hr@{cfg.k}", hit))}
        intervals[name] = cis
    _plots(out, histories, ablation, cfg.k, intervals)
    lift = metrics["lift_over_behavior_only"]
    lift_text = "" if lift is None else (
        f"\nlift of 'all' over 'behavior only': AUC {lift['auc']:+.4f}; " + "; ".join(
            f"{m.upper()} {lift[m]['diff']:+.4f} (95% paired bootstrap CI {lift[m]['ci95'][0]:+.4f} .. {lift[m]['ci95'][1]:+.4f})"
            for m in (f"ndcg@{cfg.k}", f"hr@{cfg.k}")))
    (out / "ablation.md").write_text((out / "ablation.md").read_text() + lift_text + "\n")
    tracking.current().log_result(
        {"test": best, "ablation": results, "lift_over_behavior_only": metrics["lift_over_behavior_only"]},
        [out / n for n in ("training_curves.png", "ablation.png", "ablation.md", "metrics.json")],
        tracking.lineage(info, out / "training_set.parquet" if cfg.keep_training_set else None,
                         entities=out / "training_entities.parquet"), hparam_metrics=("test/",))
    log(f"\nProtocol: {protocol}\n\n{table}\n{lift_text}\n\nsaved to {out}: ranking_model.pt, metrics.json, ablation.md, "
        "training_curves.png, ablation.png, training_entities.parquet"
        + (", training_set.parquet" if cfg.keep_training_set else "")
        + f"\npeak memory: {peak_rss_gb():.2f} GB resident; {metrics['seconds']:.0f} s")
    return metrics
