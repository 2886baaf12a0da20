"""Train the sequence encoder on next-item prediction over frozen item embeddings (``recfeast finetune sequence``).

Task. A user's last ``max_len`` rated items (their text embeddings, oldest first) go through
:class:`~recfeast.encoders.sequence.SequenceEncoder`; the output ``u`` (L2-normalised,
in the item space) scores every catalog item by ``cos(u, item) / temperature``, and a full softmax
over the whole catalog (1682 items for MovieLens-100k, small enough that no sampling is needed) is
trained with cross-entropy on the item rated next. The item embeddings are frozen: they are both the
inputs and the output space, so the trained encoder's vectors stay comparable with the item vectors
already in the feature tables and the serving index.

Positives. Every rating after a user's first one is a target, whatever its value: the encoder reads
every rated item (materialization does), a MovieLens rating says "watched", and the embedding feeds
retrieval of what the user will watch next (``/recommend`` searches the item index with it).
Keeping only ratings >= 4 would drop 39% of the targets and mix the "will they like it" question,
which the ranking model answers with its own labels, into retrieval.

Temporal split (the boundaries of ``recfeast train``, ``training/config.py``): a target belongs to
train, validation or test by its own timestamp (before ``val_start``; ``val_start``..``test_start``;
from ``test_start``). Its history is every earlier rating of the user, from any period, so no
target ever sees its own future, and the weights only ever see train-period targets. Ties in time are
ordered by item id, as ``materialize.features.user_histories`` does.

Training windows (GRU4Rec, Hidasi et al. 2016, *Session-based Recommendations with Recurrent Neural
Networks*; SASRec, Kang & McAuley 2018, predict at every position of a sequence in one pass): a window
of up to ``max_len`` consecutive items is run through the recurrent cell once and its output after
each step predicts the following item. The loss is taken only at the last ``window_stride``
positions of each window (whose targets tile the user's sequence), so every target is predicted from
at least ``max_len - window_stride + 1`` previous items (or all of them when the user has fewer),
close to what the encoder reads at inference, for ``1/window_stride`` of the recurrent work of one
window per target. ``window_stride=1`` is exactly the inference setting.

Evaluation (full ranking, no sampled negatives; the "rank all items" protocol Krichene & Rendle 2020
recommend over SASRec's sampled one): for every event of the period, the encoder output of the
user's last ``max_len`` items before it ranks all catalog items, minus the items the user rated
before it (MovieLens has no repeat ratings); Recall@K = share of events whose item is in the top K
(one relevant item: equal to HR@K), NDCG@K = mean of 1/log2(rank + 2) for rank < K. Ties count half.
Micro-averaged over events; 95% intervals by a paired bootstrap over users (clusters of events).

Reported side by side: the untrained encoder (= normalised mean of the history, its zero-initialised
projection), the last item (cosine to the last item's embedding), the most popular items before
``test_start``, and the trained encoder.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recfeast.errors import ConfigError, DataError
from recfeast.training import tracking
from recfeast.training.config import split_dates
from recfeast.training.sequence_data import (  # noqa: F401  (data and metrics; re-exported for callers)
    SequenceData, Targets, build_sequence_data, cluster_bootstrap, history_matrix, load_sequence_data,
    recall_ndcg, split_targets, target_ranks, training_windows)

#: metrics of the evaluation (K is ``SequenceTrainConfig.k``)
PROTOCOL = ("next-item prediction, temporal split by the target's time (train < {val} <= val < {test} <= test); "
            "history = the user's last {L} rated items before the target; every catalog item ranked except "
            "the user's earlier items; Recall@{k} = HR@{k} (one relevant item), NDCG@{k}; micro-averaged "
            "over events; 95% CI: paired bootstrap over users")


@dataclass
class SequenceTrainConfig:
    """Settings of ``recfeast finetune sequence`` / :func:`train_sequence` (stored in ``metrics.json``)."""

    # --- data
    repo: str | None = None                 # feature repository; default recfeast.config.repo_path()
    data_dir: str | None = None             # raw events; default $RECFEAST_DATA_DIR
    item_embeddings: str | None = None      # item table (item_id, text_embedding, text_model); default
                                            # <repo>/data/tables/item_text_embedding.parquet
    val_start: str = "1998-03-01"           # T1: targets before it train, T1..T2 validate (= recfeast train)
    test_start: str = "1998-03-29"          # T2: targets from here are the test set (= recfeast train)
    max_users: int | None = None            # seeded sample of users (quick runs, tests); None = all
    # --- encoder (SequenceEncoderConfig; input_dim comes from the item table)
    cell: str = "gru"                       # "gru" or "lstm"
    hidden_dim: int = 256                   # recurrent state size (materialization's default)
    max_len: int = 20                       # N: items the encoder reads (= materialization's sequence_max_len)
    # --- objective and optimisation
    temperature: float = 0.05               # softmax over cos(u, item) / temperature
    window_stride: int = 10                 # new targets per training window, 1..max_len (see module doc)
    lr: float = 1e-3                        # Adam
    weight_decay: float = 0.0
    grad_clip: float = 5.0                  # max global gradient norm (recurrent nets)
    batch_size: int = 256                   # windows per step
    max_epochs: int = 20
    patience: int = 3                       # epochs without a better validation NDCG@K (or loss) before stopping
    monitor: str = "ndcg"                   # early stopping on validation "ndcg" (higher) or "loss" (lower)
    seed: int = 0                           # weights, window offsets, shuffling, user sample, bootstrap
    threads: int = 2                        # torch CPU threads (the machines here have 2 shared cores)
    # --- evaluation and output
    k: int = 10                             # cut-off of Recall@K / NDCG@K
    bootstrap: int = 2000                   # bootstrap resamples of the paired differences
    eval_batch_size: int = 1024
    out_dir: str = "runs/sequence"          # checkpoint, metrics.json, training_curve.png
    progress: bool = True                   # tqdm bars per epoch

    def validate(self) -> "SequenceTrainConfig":
        """Check every setting before any work is done.

        Raises:
            ConfigError: naming the setting and what was expected.
        """
        split_dates(self.val_start, self.test_start)
        if self.cell not in ("gru", "lstm"):
            raise ConfigError(f"cell={self.cell!r}: expected 'gru' or 'lstm'")
        if self.monitor not in ("ndcg", "loss"):
            raise ConfigError(f"monitor={self.monitor!r}: expected 'ndcg' or 'loss'")
        for name in ("hidden_dim", "max_len", "batch_size", "max_epochs", "patience", "threads", "k",
                     "eval_batch_size", "bootstrap", "window_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r}: expected an integer >= 1")
        if self.window_stride > self.max_len:
            raise ConfigError(f"window_stride={self.window_stride} must be <= max_len={self.max_len}")
        if self.max_users is not None and (isinstance(self.max_users, bool) or not isinstance(self.max_users, int)
                                           or self.max_users < 2):
            raise ConfigError(f"max_users={self.max_users!r}: expected None (all users) or an integer >= 2")
        for name in ("temperature", "lr"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
                raise ConfigError(f"{name}={value!r}: expected a number > 0")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ConfigError(f"{name}={value!r}: expected a number >= 0")
        return self


# ---------------------------------------------------------------------------------------------
# model


def prefix_outputs(encoder, x: torch.Tensor) -> torch.Tensor:
    """The encoder's output after every prefix of a batch of windows, in one recurrent pass.

    ``out[:, j]`` equals ``encoder(x[:, :j + 1], j + 1)`` (the test suite pins this): normalised
    (running mean of the items + projection of the recurrent state after item j). Steps after a
    window's real length read padding; their outputs are never scored.

    Args:
        encoder: a :class:`~recfeast.encoders.sequence.SequenceEncoder`.
        x: ``(b, L, d)`` float32, left-aligned windows.

    Returns:
        ``(b, L, d)`` float32, L2-normalised along the last axis.
    """
    out, _ = encoder.rnn(x)
    steps = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype)
    mean = x.cumsum(1) / steps[None, :, None]
    return torch.nn.functional.normalize(mean + encoder.proj(out), p=2, dim=-1)


class _Scorer:
    """Frozen item tensors and the seen-item test shared by training and evaluation."""

    def __init__(self, data: SequenceData):
        emb = torch.from_numpy(data.item_emb)
        self.m = emb.shape[0]
        self.emb_pad = torch.cat([emb, torch.zeros(1, emb.shape[1])])          # inputs; row m = padding
        self.items_n = torch.nn.functional.normalize(emb, p=2, dim=1)          # output space
        self.first_pos = torch.from_numpy(data.first_pos)

    def seen(self, user: torch.Tensor, pos: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(n, m)`` bool: items the user rated before position ``pos`` (never the target)."""
        mask = self.first_pos[user] < pos[:, None]
        mask[torch.arange(len(target)), target] = False
        return mask

    def loss(self, u: torch.Tensor, target: torch.Tensor, seen: torch.Tensor, temperature: float) -> torch.Tensor:
        """Full-softmax cross-entropy of ``cos(u, item) / temperature`` with earlier items masked out."""
        logits = (u @ self.items_n.T / temperature).masked_fill(seen, float("-inf"))
        return torch.nn.functional.cross_entropy(logits, target, reduction="sum")


def evaluate(data: SequenceData, targets: Targets, methods: dict, cfg: SequenceTrainConfig,
             scorer: _Scorer | None = None) -> dict:
    """Rank the whole catalog for every target with each method.

    Args:
        methods: name -> a ``SequenceEncoder`` (scored through its ``forward`` on the last
            ``cfg.max_len`` items), ``"last_item"`` (cosine to the last item) or a ``(m,)`` float
            array of fixed item scores (e.g. popularity).

    Returns:
        name -> ``{"ranks": (n,) float64, "loss": mean cross-entropy per target (encoders only, at
        cfg.temperature) or None}``.
    """
    scorer = scorer or _Scorer(data)
    idx, lengths = history_matrix(data, targets, cfg.max_len)
    user, pos = torch.from_numpy(targets.user), torch.from_numpy(targets.pos)
    tgt = torch.from_numpy(np.fromiter((data.seqs[u][p] for u, p in zip(targets.user, targets.pos)),
                                       dtype=np.int64, count=len(targets)))
    out = {name: {"ranks": np.empty(len(targets)), "loss": 0.0} for name in methods}
    for model in methods.values():
        if isinstance(model, torch.nn.Module):
            model.eval()
    with torch.inference_mode():
        for s in range(0, len(targets), cfg.eval_batch_size):
            sl = slice(s, s + cfg.eval_batch_size)
            b_idx, b_len = torch.from_numpy(idx[sl]), torch.from_numpy(lengths[sl])
            seen = scorer.seen(user[sl], pos[sl], tgt[sl])
            for name, method in methods.items():
                if isinstance(method, torch.nn.Module):
                    u = method(scorer.emb_pad[b_idx[:, :int(b_len.max())]], b_len)
                    scores = u @ scorer.items_n.T
                    out[name]["loss"] += float(scorer.loss(u, tgt[sl], seen, cfg.temperature))
                elif isinstance(method, str) and method == "last_item":
                    last = b_idx[torch.arange(len(b_len)), b_len - 1]
                    scores = scorer.items_n[last] @ scorer.items_n.T
                    out[name]["loss"] = None
                else:
                    scores = torch.as_tensor(np.asarray(method, np.float32)).expand(len(b_len), -1)
                    out[name]["loss"] = None
                out[name]["ranks"][sl] = target_ranks(scores.numpy(), tgt[sl].numpy(), seen.numpy())
    for res in out.values():
        if res["loss"] is not None:
            res["loss"] /= max(len(targets), 1)
    return out


def _summary(ranks: np.ndarray, k: int) -> dict:
    rec, ndcg = recall_ndcg(ranks, k)
    n = max(len(ranks), 1)
    return {f"recall@{k}": float(rec.sum() / n), f"ndcg@{k}": float(ndcg.sum() / n),
            "mean_rank": float(ranks.mean()) if len(ranks) else None, "events": len(ranks)}


def fit(data: SequenceData, splits: dict[str, Targets], cfg: SequenceTrainConfig, log=print):
    """Train a fresh ``SequenceEncoder`` (Adam, full softmax) on the train targets, evaluating the
    validation targets after every epoch (epoch 0 = untrained); stop after ``cfg.patience`` epochs
    without improvement of ``cfg.monitor`` and return the best epoch's weights.

    Returns:
        ``(encoder in eval mode, history)``; history rows: epoch, train_loss (mean cross-entropy
        per scored target, nats; None at epoch 0), val_loss, val_recall@k, val_ndcg@k, seconds.
    """
    from tqdm.auto import tqdm

    from recfeast.encoders.sequence import SequenceEncoder, SequenceEncoderConfig

    torch.manual_seed(cfg.seed)
    enc = SequenceEncoder(SequenceEncoderConfig(input_dim=data.item_emb.shape[1], hidden_dim=cfg.hidden_dim,
                                                cell=cfg.cell, max_len=cfg.max_len, seed=cfg.seed))
    scorer = _Scorer(data)
    opt = torch.optim.Adam(enc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    k = cfg.k

    def validate(epoch, train_loss, seconds):
        res = evaluate(data, splits["val"], {"enc": enc}, cfg, scorer)["enc"]
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": res["loss"],
               **{f"val_{m}": v for m, v in _summary(res["ranks"], k).items() if m in (f"recall@{k}", f"ndcg@{k}")},
               "seconds": seconds}
        log(f"    epoch {epoch:2d}  train loss {'   -  ' if train_loss is None else f'{train_loss:.4f}'}  "
            f"val loss {row['val_loss']:.4f}  val Recall@{k} {row[f'val_recall@{k}']:.4f}  "
            f"val NDCG@{k} {row[f'val_ndcg@{k}']:.4f}  ({seconds:.1f} s)")
        tracking.current().log_epoch("encoder", epoch, row)
        return row

    def score(row):
        return row[f"val_ndcg@{k}"] if cfg.monitor == "ndcg" else -row["val_loss"]

    history = [validate(0, None, 0.0)]
    best, best_state, stale = score(history[0]), {n: v.clone() for n, v in enc.state_dict().items()}, 0
    for epoch in range(1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        win = training_windows(data, splits["train"], cfg.max_len, cfg.window_stride, rng)
        order = rng.permutation(len(win["idx"]))
        enc.train()
        total, count = 0.0, 0
        bar = tqdm(range(0, len(order), cfg.batch_size), desc=f"epoch {epoch}", unit="batch",
                   disable=not cfg.progress, leave=False)
        for s in bar:
            b = order[s:s + cfg.batch_size]
            x = scorer.emb_pad[torch.from_numpy(win["idx"][b])]
            out = prefix_outputs(enc, x)
            lm = torch.from_numpy(win["loss"][b])
            u = out[lm]
            tgt = torch.from_numpy(win["target"][b])[lm]
            users = torch.from_numpy(win["user"][b])[:, None].expand(-1, cfg.max_len)[lm]
            seen = scorer.seen(users, torch.from_numpy(win["tpos"][b])[lm], tgt)
            loss = scorer.loss(u, tgt, seen, cfg.temperature)
            opt.zero_grad()
            (loss / len(tgt)).backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(enc.parameters(), cfg.grad_clip)
            opt.step()
            total, count = total + float(loss.detach()), count + len(tgt)
            bar.set_postfix(loss=f"{total / max(count, 1):.3f}")
        bar.close()
        row = validate(epoch, total / max(count, 1), time.perf_counter() - t0)
        history.append(row)
        if score(row) > best + 1e-5:
            best, stale = score(row), 0
            best_state = {n: v.clone() for n, v in enc.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg.patience:
                log(f"    early stop: no better validation {cfg.monitor} for {cfg.patience} epochs")
                break
    enc.load_state_dict(best_state)
    return enc.eval(), history


# ---------------------------------------------------------------------------------------------
# the task


def _plot(path: Path, history: list[dict], k: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    ax[0].plot(ep[1:], [h["train_loss"] for h in history[1:]], "o-", label="train")
    ax[0].plot(ep, [h["val_loss"] for h in history], "o-", label="validation")
    ax[0].set_title("cross-entropy per target (full softmax)")
    ax[1].plot(ep, [h[f"val_ndcg@{k}"] for h in history], "o-", label=f"NDCG@{k}")
    ax[1].plot(ep, [h[f"val_recall@{k}"] for h in history], "o-", label=f"Recall@{k}")
    ax[1].set_title("validation (epoch 0 = untrained)")
    from matplotlib.ticker import MaxNLocator

    for a in ax:
        a.set_xlabel("epoch"), a.grid(alpha=0.3), a.legend(fontsize=8)
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@tracking.tracked("sequence")
def train_sequence(cfg: SequenceTrainConfig, log=print) -> dict:
    """Train and evaluate the sequence encoder; write ``<out_dir>/sequence_encoder.pt`` (loadable
    alone by ``SequenceEncoder.load``), ``metrics.json``, ``results.md`` and ``training_curve.png``.

    Steps: 1 events and item embeddings, 2 temporal split, 3 training with early stopping,
    4 test evaluation of the trained encoder and the baselines with bootstrap intervals, 5 save.

    Returns:
        the metrics dict written to ``metrics.json`` (``test`` rows per method, ``diff`` intervals,
        ``history``, ``config``, ``model_id``, lineage of the data).

    Raises:
        ConfigError: a bad setting; DataError: missing tables or no targets in a period.
    """
    from recfeast.io import atomic_write_bytes, write_json

    cfg.validate()
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(min(cfg.threads, os.cpu_count() or 1))
    try:
        out = Path(cfg.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tracking.current().start(cfg)
        data = load_sequence_data(cfg)
        splits = split_targets(data, cfg.val_start, cfg.test_start)
        sizes = {s: len(t) for s, t in splits.items()}
        log(f"1. data: {len(data.user_ids)} users, {len(data.item_ids)} items ({data.item_model}), "
            f"{sum(len(s) for s in data.seqs)} ratings ({data.dropped_events} without an item embedding dropped)")
        log(f"2. targets: train {sizes['train']}, val {sizes['val']}, test {sizes['test']} "
            f"(val from {cfg.val_start}, test from {cfg.test_start})")
        for s, n in sizes.items():
            if n == 0:
                raise DataError(f"no {s} targets: move val_start/test_start (data from "
                                f"{pd.Timestamp(min(t[0] for t in data.times), tz='UTC')} to "
                                f"{pd.Timestamp(max(t[-1] for t in data.times), tz='UTC')})")

        log(f"3. training {cfg.cell.upper()} (hidden {cfg.hidden_dim}, max_len {cfg.max_len}, temperature "
            f"{cfg.temperature}, {torch.get_num_threads()} threads)")
        t_fit = time.perf_counter()
        enc, history = fit(data, splits, cfg, log)
        fit_s = time.perf_counter() - t_fit

        log("4. test evaluation")
        from recfeast.encoders.sequence import SequenceEncoder

        untrained = SequenceEncoder(enc.config)
        pop = np.zeros(len(data.item_ids))
        t2 = pd.Timestamp(cfg.test_start, tz="UTC").value
        for s, t in zip(data.seqs, data.times):
            np.add.at(pop, s[t < t2], 1.0)
        names = {"untrained": "untrained encoder (mean of history)", "last_item": "last item",
                 "popular": f"most popular before {cfg.test_start}", "trained": f"trained {cfg.cell.upper()}"}
        res = evaluate(data, splits["test"], {"untrained": untrained, "last_item": "last_item", "popular": pop,
                                              "trained": enc}, cfg)
        k = cfg.k
        rows = [{"method": key, "name": names[key], **_summary(r["ranks"], k), "loss": r["loss"]}
                for key, r in res.items()]
        groups = splits["test"].user
        gains = {key: recall_ndcg(r["ranks"], k) for key, r in res.items()}
        diffs = {}
        for ref in ("untrained", "last_item", "popular"):
            diffs[f"trained - {ref}"] = {
                f"recall@{k}": cluster_bootstrap(gains["trained"][0], gains[ref][0], groups, cfg.bootstrap, cfg.seed),
                f"ndcg@{k}": cluster_bootstrap(gains["trained"][1], gains[ref][1], groups, cfg.bootstrap, cfg.seed)}

        best = max(history[1:] or history, key=lambda h: h[f"val_ndcg@{k}"] if cfg.monitor == "ndcg" else -h["val_loss"])
        epochs_run = len(history) - 1
        per_epoch = [h["seconds"] for h in history[1:]]
        protocol = PROTOCOL.format(val=cfg.val_start, test=cfg.test_start, L=cfg.max_len, k=k)
        metrics = {
            "protocol": protocol, "config": asdict(cfg), "encoder_config": asdict(enc.config),
            "model_id": enc.model_id, "untrained_model_id": untrained.model_id,
            "item_embedding_model": data.item_model,
            "data": {"users": len(data.user_ids), "items": len(data.item_ids),
                     "ratings": int(sum(len(s) for s in data.seqs)), "dropped_events": data.dropped_events,
                     "targets": sizes, "time_range": [str(pd.Timestamp(min(t[0] for t in data.times), tz="UTC")),
                                                      str(pd.Timestamp(max(t[-1] for t in data.times), tz="UTC"))],
                     "test_users": int(len(np.unique(groups)))},
            "test": rows, "diff": diffs, "history": history, "best_epoch": best["epoch"], "epochs_run": epochs_run,
            "seconds": {"fit": round(fit_s, 1), "total": round(time.perf_counter() - t_start, 1),
                        **({f"per_epoch_{name}": round(float(f(per_epoch)), 1)
                            for name, f in (("mean", np.mean), ("median", np.median), ("min", np.min))}
                           if per_epoch else {})},
            "threads": torch.get_num_threads(),
        }

        log("5. save")
        enc.save(out / "sequence_encoder.pt")
        write_json(out / "metrics.json", metrics)
        table = pd.DataFrame(rows)[["name", f"recall@{k}", f"ndcg@{k}", "mean_rank", "loss", "events"]]
        table["loss"] = table["loss"].astype(object).where(table["loss"].notna(), None)  # "-" for the baselines
        md = table.to_markdown(index=False, floatfmt=".4f", missingval="-")
        diff_text = "\n".join(
            f"- {name}: " + "; ".join(f"{m} {d['diff']:+.4f} (95% CI {d['ci95'][0]:+.4f} .. "
                                       f"{d['ci95'][1]:+.4f}, {d['groups']} users)" for m, d in dd.items())
            for name, dd in diffs.items())
        text = (f"# Sequence encoder ({cfg.cell.upper()}) on next-item prediction, test from {cfg.test_start}\n\n"
                f"Protocol: {protocol}\n\n{md}\n\n{diff_text}\n\nmodel: {enc.model_id}; best epoch "
                f"{best['epoch']} of {epochs_run}; seconds per epoch (training + validation): median "
                f"{metrics['seconds'].get('per_epoch_median')}, min {metrics['seconds'].get('per_epoch_min')}; "
                f"{metrics['threads']} threads\n")
        atomic_write_bytes(out / "results.md", lambda p: p.write_text(text))
        _plot(out / "training_curve.png", history, k, f"{cfg.cell.upper()} sequence encoder, {enc.model_id}")
        tracking.current().log_result(
            {"test": rows, "diff": diffs, "best_epoch": best["epoch"], "epochs_run": epochs_run},
            [out / "training_curve.png", out / "results.md", out / "metrics.json"],
            {"recfeast.model_id": enc.model_id, "recfeast.model.item_embedding": data.item_model,
             "recfeast.data": metrics["data"]}, hparam_metrics=("test/trained/", "diff/"))
        log(f"\n{text}\nsaved to {out}: sequence_encoder.pt, metrics.json, results.md, training_curve.png")
        return metrics
    finally:
        torch.set_num_threads(threads)
