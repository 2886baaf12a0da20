"""Fine-tune the text encoder on the platform's own data: ``recfeast finetune text``.

Reads top to bottom as the steps of a run:

1. data: clean items and events; task (a) genre labels from genre-free text, split by release
   date; task (b) co-rating pairs, split in time (:mod:`recfeast.training.text_data`);
2. "before" metrics with the frozen encoder: genre micro-F1 of a linear probe, next-item
   Recall@10 / NDCG@10 by cosine on the test period;
3. training, end to end: the BERT encoder with mean pooling plus a linear genre head, binary
   cross-entropy for (a) and an in-batch-negatives InfoNCE loss for (b) (symmetric, temperature
   0.05: sentence-transformers' MultipleNegativesRankingLoss, Henderson et al. 2017; SimCSE, Gao et
   al. 2021), batches of both tasks interleaved, AdamW, early stopping on the validation loss;
4. "after" metrics, same protocol, plus the head's own micro-F1;
5. the checkpoint: a transformers folder (model + tokenizer, loadable by :class:`TextEncoder`
   alone), the genre head, ``finetune.json`` (config, metrics, lineage: base model, data range,
   counts), ``metrics.json`` and ``training_curves.png``.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from recfeast.errors import ConfigError


@dataclass
class TextFinetuneConfig:
    """Settings of a text fine-tuning run (stored in the checkpoint's ``finetune.json``)."""

    data_dir: str | None = None          # raw data folder; default $RECFEAST_DATA_DIR
    base_model: str | None = None        # transformers folder; default the packaged all-MiniLM-L6-v2
    name: str = "all-MiniLM-L6-v2-recfeast"  # model name in its identity (name@sha256:...)
    tasks: tuple[str, ...] = ("genre", "contrastive")
    max_length: int = 128                # tokens per text while training (and in the saved model)
    train_layers: int | None = None      # top transformer layers updated; None = all (end to end), with
                                         # fewer the token embeddings and lower layers stay frozen (faster on CPU)
    genre_batch_size: int = 16           # items per genre step
    pair_batch_size: int = 32            # pairs per contrastive step (31 in-batch negatives each)
    pairs_per_epoch: int = 1024          # contrastive pairs sampled per epoch
    window_s: int = 3600                 # task (b): liked items within this many seconds form a pair
    min_rating: float = 4.0              # task (b): "liked"
    temperature: float = 0.05            # InfoNCE temperature (scale 20)
    lr: float = 2e-5                     # encoder learning rate (AdamW)
    head_lr: float = 1e-3                # genre head learning rate
    weight_decay: float = 0.01
    max_epochs: int = 3
    patience: int = 1                    # epochs without validation improvement before stopping
    val_start: str = "1998-03-01"        # pairs: train before, validation until test_start
    test_start: str = "1998-03-29"
    genre_val_share: float = 0.10        # newest dated items: test share, validation share before them
    genre_test_share: float = 0.15
    max_items: int | None = None         # cap on items (tests); None = all
    seed: int = 0
    out_dir: str = "runs/text_finetune"

    def validate(self) -> "TextFinetuneConfig":
        """Raises ConfigError naming the bad setting."""
        bad = set(self.tasks) - {"genre", "contrastive"}
        if bad or not self.tasks:
            raise ConfigError(f"tasks={self.tasks!r}: expected one or both of 'genre', 'contrastive'")
        if self.train_layers is not None and (not isinstance(self.train_layers, int) or self.train_layers < 1):
            raise ConfigError(f"train_layers={self.train_layers!r}: expected None (all) or an integer >= 1")
        for name in ("max_length", "genre_batch_size", "pairs_per_epoch", "max_epochs", "patience"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected an integer >= 1")
        if not isinstance(self.pair_batch_size, int) or self.pair_batch_size < 2:
            raise ConfigError(f"pair_batch_size={self.pair_batch_size!r}: expected an integer >= 2 (in-batch negatives)")
        for name in ("lr", "head_lr", "temperature"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)!r}: expected a positive number")
        from recfeast.training.config import split_dates

        split_dates(self.val_start, self.test_start)
        if not 0 < self.genre_test_share < 1 or not 0 < self.genre_val_share < 1:
            raise ConfigError("genre_val_share and genre_test_share must be in (0, 1)")
        return self


class _Model:
    """The encoder (transformers AutoModel, mean pooling) and the genre head, in training mode."""

    def __init__(self, path: Path, n_genres: int, max_length: int):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, n_genres)
        self.max_length = max_length

    def embed(self, texts: list[str], normalize: bool = True):
        import torch

        from recfeast.encoders.text import mean_pool

        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        emb = mean_pool(self.encoder(**batch).last_hidden_state, batch["attention_mask"])
        return torch.nn.functional.normalize(emb, dim=1) if normalize else emb


def _info_nce(q, t, temperature: float):
    import torch

    logits = q @ t.T / temperature
    labels = torch.arange(len(q))
    return 0.5 * (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels))


def _pair_batches(pairs, batch_size: int, rng: np.random.Generator, limit: int | None) -> list[list[tuple[int, int]]]:
    """Shuffled batches of (query, target) pairs with no item twice in a batch (a repeated item would
    be its own false negative)."""
    idx = rng.permutation(len(pairs))[: limit or len(pairs)]
    q, t = pairs["query_item"].to_numpy(), pairs["target_item"].to_numpy()
    batches, cur, seen = [], [], set()
    for i in idx:
        a, b = int(q[i]), int(t[i])
        if a in seen or b in seen:
            continue
        cur.append((a, b))
        seen |= {a, b}
        if len(cur) == batch_size:
            batches.append(cur)
            cur, seen = [], set()
    return batches


def _encode_all(model: _Model, texts: list[str], batch_size: int = 64) -> np.ndarray:
    import torch

    model.encoder.eval()
    order = np.argsort([-len(t) for t in texts], kind="stable")   # similar lengths batch together
    emb = np.zeros((len(texts), model.encoder.config.hidden_size), np.float32)
    with torch.inference_mode():
        for s in range(0, len(texts), batch_size):
            idx = order[s:s + batch_size]
            emb[idx] = model.embed([texts[i] for i in idx]).numpy()
    return emb


def _evaluate(model: _Model, gt, prod_texts, item_ids, test_pairs, events) -> dict:
    from recfeast.training.text_data import next_item_metrics, probe_micro_f1

    emb_gt = _encode_all(model, gt.texts)
    tr, va, te = (gt.split == s for s in ("train", "val", "test"))
    f1 = probe_micro_f1(emb_gt[tr], gt.labels[tr], emb_gt[va], gt.labels[va], emb_gt[te], gt.labels[te])
    nxt = next_item_metrics(_encode_all(model, prod_texts), item_ids, test_pairs, events)
    return {"genre_probe_micro_f1": f1, "next_item": nxt}


def finetune_text(cfg: TextFinetuneConfig, log=print) -> dict:
    """Run the steps of the module docstring.

    Returns:
        ``{"out_dir", "model_dir", "model_id", "base_model_id", "metrics", "epochs"}``.

    Raises:
        ConfigError: bad settings or data folder. ModelError: the base model cannot be loaded.
    """
    import torch
    from tqdm.auto import tqdm

    from recfeast import config
    from recfeast import entities as F
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean
    from recfeast.encoders.text import TextEncoder, default_model_path
    from recfeast.io import write_json
    from recfeast.training.text_data import corating_pairs, genre_task, split_pairs

    cfg.validate()
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. data
    from recfeast.spec import load_spec, spec_path

    spec = load_spec(spec_path(config.repo_path(getattr(cfg, "repo", None))))
    data = clean(read_catalog(config.data_dir(cfg.data_dir), spec))
    items, events = data.items, data.events
    if cfg.max_items:
        keep = events["item_id"].value_counts().index[: cfg.max_items]
        items = items[items["item_id"].isin(keep)].reset_index(drop=True)
        events = events[events["item_id"].isin(keep)]
    gt = genre_task(items, cfg.genre_val_share, cfg.genre_test_share, spec=spec)
    prod_texts, item_ids = F.item_text(items), items["item_id"].to_numpy(np.int64)
    text_of = dict(zip(item_ids.tolist(), prod_texts))
    pairs = split_pairs(corating_pairs(events, cfg.window_s, cfg.min_rating, spec), cfg.val_start, cfg.test_start)
    counts = {"items": len(items), **{f"genre_{s}": int((gt.split == s).sum()) for s in ("train", "val", "test")},
              **{f"pairs_{s}": len(p) for s, p in pairs.items()}, "genres": len(gt.genres)}
    log(f"[1] data: {counts}")
    if "contrastive" in cfg.tasks and len(pairs["train"]) < cfg.pair_batch_size:
        raise ConfigError(f"only {len(pairs['train'])} training pairs: fewer than pair_batch_size={cfg.pair_batch_size}")

    # 2. before
    base_path = Path(cfg.base_model) if cfg.base_model else default_model_path()
    base_id = TextEncoder(base_path, max_length=cfg.max_length).model_id
    model = _Model(base_path, len(gt.genres), cfg.max_length)
    before = _evaluate(model, gt, prod_texts, item_ids, pairs["test"], events)
    log(f"[2] before: genre probe micro-F1 {before['genre_probe_micro_f1']:.4f}, next-item "
        f"recall@10 {before['next_item']['recall@10']:.4f} ndcg@10 {before['next_item']['ndcg@10']:.4f}")

    # 3. train
    if cfg.train_layers is not None:
        layers = model.encoder.encoder.layer
        frozen = [model.encoder.embeddings, *layers[: max(0, len(layers) - cfg.train_layers)]]
        for module in frozen:
            module.requires_grad_(False)
    opt = torch.optim.AdamW([{"params": [p for p in model.encoder.parameters() if p.requires_grad], "lr": cfg.lr},
                             {"params": model.head.parameters(), "lr": cfg.head_lr}], weight_decay=cfg.weight_decay)
    bce = torch.nn.BCEWithLogitsLoss()
    g_texts, g_labels = gt.part("train")
    gv_texts, gv_labels = gt.part("val")
    curves, best, best_state, bad_epochs = [], float("inf"), None, 0

    def val_loss() -> dict:
        model.encoder.eval()
        res = {}
        with torch.inference_mode():
            if "genre" in cfg.tasks and gv_texts:
                res["genre"] = float(bce(model.head(model.embed(gv_texts, normalize=False)), torch.from_numpy(gv_labels)))
            if "contrastive" in cfg.tasks:
                vb = _pair_batches(pairs["val"], cfg.pair_batch_size, np.random.default_rng(1), None)[:8]
                if vb:
                    res["contrastive"] = float(np.mean([float(_info_nce(model.embed([text_of[a] for a, _ in b]),
                                                                           model.embed([text_of[t] for _, t in b]),
                                                                           cfg.temperature)) for b in vb]))
        return res

    curves.append({"epoch": 0, "train": None, **{f"val_{k}": v for k, v in val_loss().items()}})
    for epoch in range(1, cfg.max_epochs + 1):
        t0 = time.perf_counter()
        model.encoder.train()
        g_order = rng.permutation(len(g_texts)) if "genre" in cfg.tasks else np.array([], int)
        g_batches = [g_order[s:s + cfg.genre_batch_size] for s in range(0, len(g_order), cfg.genre_batch_size)]
        p_batches = (_pair_batches(pairs["train"], cfg.pair_batch_size, rng, cfg.pairs_per_epoch)
                     if "contrastive" in cfg.tasks else [])
        steps, losses = max(len(g_batches), len(p_batches)), []
        for s in tqdm(range(steps), desc=f"epoch {epoch}", leave=False):
            loss = torch.zeros(())
            if s < len(g_batches):
                b = g_batches[s]
                logits = model.head(model.embed([g_texts[i] for i in b], normalize=False))
                loss = loss + bce(logits, torch.from_numpy(g_labels[b]))
            if s < len(p_batches):
                b = p_batches[s]
                loss = loss + _info_nce(model.embed([text_of[a] for a, _ in b]),
                                        model.embed([text_of[t] for _, t in b]), cfg.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        v = val_loss()
        total = sum(v.values())
        curves.append({"epoch": epoch, "train": float(np.mean(losses)), "seconds": round(time.perf_counter() - t0, 1),
                       **{f"val_{k}": x for k, x in v.items()}})
        log(f"[3] epoch {epoch}: train loss {np.mean(losses):.4f}, val {v}, {curves[-1]['seconds']} s")
        if total < best - 1e-4:
            best, bad_epochs = total, 0
            best_state = (copy.deepcopy(model.encoder.state_dict()), copy.deepcopy(model.head.state_dict()))
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                break
    if best_state is not None:
        model.encoder.load_state_dict(best_state[0])
        model.head.load_state_dict(best_state[1])

    # 4. after
    after = _evaluate(model, gt, prod_texts, item_ids, pairs["test"], events)
    from recfeast.training.text_data import best_threshold, micro_f1

    te_texts, te_labels = gt.part("test")
    with torch.inference_mode():
        model.encoder.eval()
        head_probs = [torch.sigmoid(model.head(model.embed(t, normalize=False))).numpy() if t else None
                      for t in (gv_texts, te_texts)]
    head_f1 = (micro_f1(head_probs[1], te_labels, best_threshold(head_probs[0], gv_labels))
               if te_texts and gv_texts else 0.0)
    from recfeast.training.evaluate import paired_bootstrap

    lift = paired_bootstrap(after["next_item"]["per_pair_ndcg"], before["next_item"]["per_pair_ndcg"])
    log(f"[4] after: genre probe micro-F1 {after['genre_probe_micro_f1']:.4f} (head {head_f1:.4f}), next-item "
        f"recall@10 {after['next_item']['recall@10']:.4f} ndcg@10 {after['next_item']['ndcg@10']:.4f}")

    # 5. checkpoint
    model_dir = out / "model"
    tmp = out / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.encoder.save_pretrained(str(tmp))
    model.tokenizer.save_pretrained(str(tmp))
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": cfg.max_length}) + "\n")
    torch.save({"genres": gt.genres, "state_dict": model.head.state_dict()}, tmp / "genre_head.pt")
    shutil.rmtree(model_dir, ignore_errors=True)
    tmp.rename(model_dir)
    model_id = TextEncoder(model_dir, name=cfg.name).model_id

    def clean_metrics(m):
        return {"genre_probe_micro_f1": m["genre_probe_micro_f1"],
                **{k: v for k, v in m["next_item"].items() if not k.startswith("per_pair")}}

    metrics = {"before": clean_metrics(before), "after": {**clean_metrics(after), "genre_head_micro_f1": head_f1},
               "next_item_ndcg_lift": lift, "protocol": {
                   "genre": "linear probe (one-vs-rest logistic regression) on genre-free item text embeddings "
                            "(the head is scored the same way); "
                            f"items split by release date, newest {cfg.genre_test_share:.0%} = test; one threshold tuned on the "
                            "validation items; micro-F1",
                   "next_item": f"pairs of consecutive items rated >= {cfg.min_rating:g} by one user within "
                                f"{cfg.window_s} s, target on/after {cfg.test_start}; all items ranked by cosine to the "
                                "query item, the query and the user's earlier rated items excluded"}}
    lineage = {"base_model": str(base_path), "base_model_id": base_id, "data_dir": str(config.data_dir(cfg.data_dir)),
               "train_until": cfg.val_start, "counts": counts}
    write_json(model_dir / "finetune.json", {"config": asdict(cfg), "model_id": model_id, "metrics": metrics,
                                             "lineage": lineage, "curves": curves})
    write_json(out / "metrics.json", {"model_id": model_id, "metrics": metrics, "curves": curves})
    _plot(curves, out / "training_curves.png")
    log(f"[5] saved {model_dir} ({model_id}) in {time.perf_counter() - t_start:.0f} s")
    return {"out_dir": str(out), "model_dir": str(model_dir), "model_id": model_id, "base_model_id": base_id,
            "metrics": metrics, "epochs": len(curves) - 1, "lineage": lineage, "config": asdict(cfg)}


def _plot(curves: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ep = [c["epoch"] for c in curves]
    for key in sorted({k for c in curves for k in c if k.startswith(("train", "val_"))}):
        ys = [c.get(key) for c in curves]
        pts = [(e, y) for e, y in zip(ep, ys) if y is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("text encoder fine-tuning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
