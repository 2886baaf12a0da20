"""Next-item data and metrics for the sequence encoder: rating sequences as item rows, targets split
in time, history matrices and training windows; full-catalog ranks, Recall/NDCG@K and a user-level
bootstrap. Used by :mod:`recfeast.training.sequence_task` (see its docstring for the protocol)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from recfeast.errors import ConfigError, DataError

if TYPE_CHECKING:
    from recfeast.training.sequence_task import SequenceTrainConfig

# ---------------------------------------------------------------------------------------------
# data


@dataclass
class SequenceData:
    """Users' rating sequences as rows of the item table.

    Attributes:
        item_ids: ``(m,)`` int64 catalog item ids, in the row order of ``item_emb``.
        item_emb: ``(m, d)`` float32 item embeddings as the table stores them (encoder inputs).
        item_model: identity of the model that produced ``item_emb`` (``name@sha256:...``).
        user_ids: ``(u,)`` int64.
        seqs: ``u`` arrays of item rows (int64), oldest first (ties in time by item id).
        times: ``u`` arrays of event times, int64 nanoseconds since the epoch (UTC), aligned with ``seqs``.
        first_pos: ``(u, m)`` int32: position of the user's first rating of each item, or
            ``np.iinfo(int32).max`` when never rated (the "seen before position p" test is ``first_pos < p``).
        dropped_events: ratings dropped because their item has no embedding.
    """

    item_ids: np.ndarray
    item_emb: np.ndarray
    item_model: str
    user_ids: np.ndarray
    seqs: list
    times: list
    first_pos: np.ndarray
    dropped_events: int = 0


def build_sequence_data(events: pd.DataFrame, items: pd.DataFrame) -> SequenceData:
    """Group cleaned rating events into per-user sequences over the rows of an item table.

    Args:
        events: columns user_id, item_id (int), event_timestamp (tz-aware UTC); every row is one
            interaction (``action`` is not read). Rows whose item is not in ``items`` are dropped and counted.
        items: columns item_id, text_embedding (equal-length float vectors), text_model.

    Returns:
        :class:`SequenceData`; users with no kept event are left out.

    Raises:
        DataError: a column is missing, the embeddings are ragged or not finite, or no event remains.
    """
    for frame, name, cols in ((events, "events", ("user_id", "item_id", "event_timestamp")),
                              (items, "item table", ("item_id", "text_embedding", "text_model"))):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise DataError(f"{name} lacks column(s) {missing}; has {list(frame.columns)}")
    items = items.drop_duplicates("item_id", keep="last").sort_values("item_id")
    try:
        emb = np.stack([np.asarray(v, dtype=np.float32) for v in items["text_embedding"]])
    except ValueError as exc:
        raise DataError(f"item table: text_embedding vectors have different lengths ({exc})") from exc
    if emb.ndim != 2 or not np.isfinite(emb).all():
        raise DataError("item table: text_embedding must be finite vectors of one length")
    models = items["text_model"].dropna().unique()
    if len(models) > 1:
        raise DataError(f"item table mixes embedding models {sorted(models)}: rematerialize with one model")
    item_ids = items["item_id"].to_numpy(np.int64)
    row = pd.Series(np.arange(len(item_ids)), index=item_ids)
    ev = events[["user_id", "item_id", "event_timestamp"]]
    known = ev["item_id"].isin(row.index)
    ev = ev[known].sort_values(["user_id", "event_timestamp", "item_id"], kind="stable")
    if ev.empty:
        raise DataError("no event refers to an item of the item table")
    users = ev["user_id"].to_numpy(np.int64)
    rows = row[ev["item_id"].to_numpy(np.int64)].to_numpy(np.int64)
    times = ev["event_timestamp"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]").astype(np.int64)
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    user_ids = users[bounds[:-1]]
    never = np.iinfo(np.int32).max
    first_pos = np.full((len(user_ids), len(item_ids)), never, dtype=np.int32)
    seqs, tlist = [], []
    for u, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        s = rows[a:b]
        seqs.append(s)
        tlist.append(times[a:b])
        pos = np.arange(len(s), dtype=np.int32)[::-1]  # assign last-to-first so the first occurrence wins
        first_pos[u, s[::-1]] = pos
    return SequenceData(item_ids, emb, str(models[0]) if len(models) else "unknown", user_ids, seqs, tlist,
                        first_pos, int((~known).sum()))


def load_sequence_data(cfg: SequenceTrainConfig) -> SequenceData:
    """Read and clean the raw events (``cfg.data_dir``) and the item embedding table, keep the
    events of the catalog spec's sequence types, sample ``cfg.max_users`` users (seeded) if set.

    Raises:
        ConfigError: no data folder; DataError: a missing table or unusable data.
    """
    from recfeast import config
    from recfeast.adapters import read_catalog
    from recfeast.cleaning import clean

    path = Path(cfg.item_embeddings) if cfg.item_embeddings else (
        config.tables_dir(config.repo_path(cfg.repo)) / "item_text_embedding.parquet")
    if not path.is_file():
        raise DataError(f"{path}: no item embedding table; run `recfeast materialize --data-dir ...` first "
                        "(or pass --item-embeddings)")
    items = pd.read_parquet(path, columns=["item_id", "text_embedding", "text_model"])
    from recfeast.spec import load_spec, spec_path

    spec = load_spec(spec_path(config.repo_path(cfg.repo)))
    events = clean(read_catalog(config.data_dir(cfg.data_dir), spec)).events
    events = events[events["action"].isin(spec.sequence_types())]   # the events the sequence view reads
    if cfg.max_users is not None:
        users = np.sort(events["user_id"].unique())
        if len(users) > cfg.max_users:
            keep = np.random.default_rng(cfg.seed).choice(users, cfg.max_users, replace=False)
            events = events[events["user_id"].isin(keep)]
    return build_sequence_data(events, items)


@dataclass
class Targets:
    """Targets of one period: ``user`` (index into ``SequenceData.seqs``) and ``pos`` (position of the
    target in that user's sequence, >= 1), both ``(n,)`` int64, ordered by user then position."""

    user: np.ndarray
    pos: np.ndarray

    def __len__(self) -> int:
        return len(self.pos)


def split_targets(data: SequenceData, val_start: str, test_start: str) -> dict[str, Targets]:
    """Every rating after a user's first, assigned to ``train``/``val``/``test`` by its own time."""
    t1 = pd.Timestamp(val_start, tz="UTC").value
    t2 = pd.Timestamp(test_start, tz="UTC").value
    out = {s: ([], []) for s in ("train", "val", "test")}
    for u, t in enumerate(data.times):
        pos = np.arange(1, len(t))
        tt = t[1:]
        for name, sel in (("train", tt < t1), ("val", (tt >= t1) & (tt < t2)), ("test", tt >= t2)):
            out[name][0].append(np.full(sel.sum(), u))
            out[name][1].append(pos[sel])
    return {s: Targets(np.concatenate(us).astype(np.int64) if us else np.zeros(0, np.int64),
                       np.concatenate(ps).astype(np.int64) if ps else np.zeros(0, np.int64))
            for s, (us, ps) in out.items()}


def history_matrix(data: SequenceData, targets: Targets, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Histories of the targets: ``(idx, lengths)``; ``idx`` ``(n, max_len)`` int64 item rows,
    left-aligned, padded with ``m`` (a zero row appended to the embeddings); ``lengths`` ``(n,)`` int64 >= 1."""
    m = len(data.item_ids)
    n = len(targets)
    idx = np.full((n, max_len), m, dtype=np.int64)
    lengths = np.empty(n, dtype=np.int64)
    for i, (u, p) in enumerate(zip(targets.user, targets.pos)):
        h = data.seqs[u][max(0, p - max_len):p]
        idx[i, :len(h)] = h
        lengths[i] = len(h)
    return idx, lengths


def training_windows(data: SequenceData, targets: Targets, max_len: int, stride: int,
                     rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Windows for all-position training (see module doc), with a fresh random phase per call.

    Targets of a user are cut into groups of up to ``stride`` consecutive positions (phase drawn
    from ``rng``); a group ending at target position ``q`` becomes the window of input positions
    ``max(0, q - max_len) .. q - 1``; the output after input position ``p - 1`` predicts position ``p``.

    Returns:
        ``idx`` ``(w, max_len)`` int64 input item rows (padded with ``m``), ``user`` ``(w,)`` int64,
        ``start`` ``(w,)`` int64 (sequence position of the first input), ``loss`` ``(w, max_len)`` bool
        (step j's output is scored), ``target`` ``(w, max_len)`` int64 item row predicted at step j
        (``m`` where not scored), ``tpos`` ``(w, max_len)`` int64 sequence position of that target.
    """
    m = len(data.item_ids)
    bounds = np.flatnonzero(np.r_[True, targets.user[1:] != targets.user[:-1], True]) if len(targets) else [0]
    idx, users, starts, loss, tgt, tpos = [], [], [], [], [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        u = int(targets.user[a])
        pos = targets.pos[a:b]
        seq = data.seqs[u]
        phase = int(rng.integers(0, stride))
        group = (pos + phase) // stride
        cuts = np.flatnonzero(np.r_[True, group[1:] != group[:-1], True])
        for c0, c1 in zip(cuts[:-1], cuts[1:]):
            ps = pos[c0:c1]
            q = int(ps[-1])
            s = max(0, q - max_len)
            win = np.full(max_len, m, dtype=np.int64)
            win[:q - s] = seq[s:q]
            lm = np.zeros(max_len, dtype=bool)
            lm[ps - s - 1] = True
            t = np.full(max_len, m, dtype=np.int64)
            t[ps - s - 1] = seq[ps]
            tp = np.zeros(max_len, dtype=np.int64)
            tp[ps - s - 1] = ps
            idx.append(win), users.append(u), starts.append(s), loss.append(lm), tgt.append(t), tpos.append(tp)
    if not idx:
        z = np.zeros((0, max_len), np.int64)
        return {"idx": z, "user": np.zeros(0, np.int64), "start": np.zeros(0, np.int64),
                "loss": z.astype(bool), "target": z, "tpos": z}
    return {"idx": np.stack(idx), "user": np.asarray(users, np.int64), "start": np.asarray(starts, np.int64),
            "loss": np.stack(loss), "target": np.stack(tgt), "tpos": np.stack(tpos)}


# ---------------------------------------------------------------------------------------------
# metrics


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """0-based rank of each row's target among the row's candidates; ties count half.

    Args:
        scores: ``(n, m)`` float, higher = better.
        targets: ``(n,)`` int column of each row's relevant item.
        exclude: ``(n, m)`` bool, items removed from the ranking (the target itself is never removed).

    Returns:
        ``(n,)`` float64: number of kept items scored above the target + half of those tied with it.

    Raises:
        ValueError: shapes disagree or a target is out of range.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    n, m = scores.shape
    if targets.shape != (n,) or (exclude is not None and exclude.shape != (n, m)):
        raise ValueError(f"scores {scores.shape}, targets {targets.shape}, exclude "
                         f"{None if exclude is None else exclude.shape}: expected (n, m), (n,), (n, m)")
    if n and (targets.min() < 0 or targets.max() >= m):
        raise ValueError(f"targets must be in 0..{m - 1}")
    st = scores[np.arange(n), targets][:, None]
    keep = np.ones((n, m), dtype=bool) if exclude is None else ~exclude
    keep[np.arange(n), targets] = False  # compare with the others
    return (((scores > st) & keep).sum(1) + 0.5 * ((scores == st) & keep).sum(1)).astype(np.float64)


def recall_ndcg(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-event ``(recall@k, ndcg@k)`` with one relevant item: ``1[rank < k]`` and
    ``1/log2(rank + 2)`` when rank < k else 0 (Järvelin & Kekäläinen 2002; the ideal DCG is 1)."""
    from recfeast.training.evaluate import per_user_gains   # the one definition of the ranking metrics

    ndcg, hit = per_user_gains(np.asarray(ranks, dtype=np.float64), k)
    return hit, ndcg


def cluster_bootstrap(a: np.ndarray, b: np.ndarray, groups: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """95% percentile-bootstrap interval of ``mean(a) - mean(b)`` over paired per-event values,
    resampling whole groups (users) with replacement, so that events of one user move together
    (cluster bootstrap; Efron & Tibshirani 1993; Field & Welsh 2007).

    Args:
        a, b: ``(n_events,)`` float per-event values of two methods on the same events.
        groups: ``(n_events,)`` group id of each event.

    Returns:
        ``{"diff": mean(a) - mean(b), "ci95": [low, high], "groups": number of groups}``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _, g = np.unique(groups, return_inverse=True)
    ng = int(g.max()) + 1 if len(g) else 0
    sums = np.bincount(g, weights=a - b, minlength=ng)
    counts = np.bincount(g, minlength=ng).astype(np.float64)
    rng = np.random.default_rng(seed)
    w = np.stack([np.bincount(rng.integers(0, ng, ng), minlength=ng) for _ in range(n)]).astype(np.float64)
    diffs = (w @ sums) / np.maximum(w @ counts, 1.0)
    return {"diff": float((a - b).mean()) if len(a) else 0.0,
            "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))], "groups": ng}
