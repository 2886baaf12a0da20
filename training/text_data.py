"""Data for fine-tuning the text encoder: genre labels and co-rating pairs, split in time.

Two tasks a recommender uses (issue 4):

(a) multi-label genre classification from the item text. The input is the item text *without* its
    genre names (the production text, :func:`recfeast.materialize.features.item_text`, contains them,
    which would make the task a copy). Items are split by release date: the newest
    ``test_share`` of dated items are the test set, the ``val_share`` before them validation, the rest
    (and undated items) training, so the test measures items the model has not seen, from a later
    period.

(b) contrastive pairs: two items rated ``>= min_rating`` consecutively by the same user within
    ``window_s`` seconds (a session of liked items). Pairs before ``val_start`` train, pairs in
    ``[val_start, test_start)`` validate, pairs from ``test_start`` on test the next-item task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recfeast import entities as F
from recfeast.training.evaluate import per_user_gains


@dataclass
class GenreTask:
    """Item texts without genres and multi-hot labels, split by release date.

    Attributes:
        item_ids: ``(n,)`` int64. texts: n strings. labels: ``(n, n_genres)`` float32 0/1.
        genres: label names (column order). split: ``(n,)`` array of ``"train"|"val"|"test"``.
    """

    item_ids: np.ndarray
    texts: list[str]
    labels: np.ndarray
    genres: list[str]
    split: np.ndarray

    def part(self, name: str) -> tuple[list[str], np.ndarray]:
        """``(texts, labels)`` of one split."""
        idx = np.flatnonzero(self.split == name)
        return [self.texts[i] for i in idx], self.labels[idx]


def genre_task(items: pd.DataFrame, val_share: float = 0.10, test_share: float = 0.15,
               drop=("unknown",), spec=None) -> GenreTask:
    """Build task (a) from clean items (see the module docstring).

    The labels are the catalog spec's first multi-valued item categorical (MovieLens: genres); the
    texts are the spec's text fields without that field; items are split by ``available_from``.

    Raises:
        ConfigError: the spec has no multi-valued item categorical to use as labels.
    """
    from recfeast.adapters import default_spec
    from recfeast.cleaning import compose_text
    from recfeast.errors import ConfigError

    spec = spec or default_spec()
    multi = spec.multi_categoricals()
    if not multi or spec.items.text is None:
        raise ConfigError(f"catalog {spec.name!r}: text fine-tuning's label task needs a multi-valued item "
                          "categorical (e.g. genres or tags) and items.text")
    field = multi[0].field
    texts = compose_text(items, [f for f in spec.items.text.fields if f != field])
    genres = sorted({g for gs in items[field] for g in gs} - set(drop))
    labels = np.asarray(F.genre_matrix(items, genres, field), dtype=np.float32)
    dates = items["available_from"] if "available_from" in items.columns else pd.Series(pd.NaT, index=items.index)
    dated = dates.notna().to_numpy()
    order = np.argsort(dates.fillna(pd.Timestamp("1900-01-01", tz="UTC")).to_numpy(), kind="stable")
    order = [i for i in order if dated[i]]
    n_test, n_val = int(round(len(order) * test_share)), int(round(len(order) * val_share))
    split = np.full(len(items), "train", dtype=object)
    if n_test:
        split[order[len(order) - n_test:]] = "test"
    if n_val:
        split[order[len(order) - n_test - n_val:len(order) - n_test]] = "val"
    return GenreTask(items["item_id"].to_numpy(np.int64), texts, labels, genres, split)


def corating_pairs(events: pd.DataFrame, window_s: int = 3600, min_rating: float = 4.0, spec=None) -> pd.DataFrame:
    """Consecutive liked items of one user within ``window_s``: task (b)'s pairs. "Liked" = a
    positive event under the catalog ``spec`` (its types' positive rules, ``min_rating`` as the
    valued types' threshold); without a spec, ``rate`` events with value >= ``min_rating``.

    Returns:
        DataFrame user_id, query_item, target_item, event_timestamp (of the target), one row per pair,
        in time order.
    """
    if spec is not None:
        from recfeast.training.examples import positive_mask

        r = events[positive_mask(events, spec, min_rating)]
    else:
        r = events[(events["action"] == "rate") & (events["value"] >= min_rating)]
    r = r.sort_values(["user_id", "event_timestamp", "item_id"], kind="stable")
    same_user = r["user_id"].to_numpy()[1:] == r["user_id"].to_numpy()[:-1]
    ts = r["event_timestamp"].astype("int64").to_numpy() // 10**9
    close = (ts[1:] - ts[:-1]) <= window_s
    keep = np.flatnonzero(same_user & close)
    items = r["item_id"].to_numpy()
    out = pd.DataFrame({"user_id": r["user_id"].to_numpy()[keep + 1], "query_item": items[keep],
                        "target_item": items[keep + 1],
                        "event_timestamp": r["event_timestamp"].to_numpy()[keep + 1]})
    out = out[out["query_item"] != out["target_item"]]
    return out.sort_values("event_timestamp", kind="stable").reset_index(drop=True)


def split_pairs(pairs: pd.DataFrame, val_start: str, test_start: str) -> dict[str, pd.DataFrame]:
    """``{"train", "val", "test"}`` by the target's time."""
    t1, t2 = pd.Timestamp(val_start, tz="UTC"), pd.Timestamp(test_start, tz="UTC")
    ts = pd.to_datetime(pairs["event_timestamp"], utc=True)
    return {"train": pairs[ts < t1], "val": pairs[(ts >= t1) & (ts < t2)], "test": pairs[ts >= t2]}


def next_item_metrics(emb: np.ndarray, item_ids: np.ndarray, pairs: pd.DataFrame, events: pd.DataFrame,
                      k: int = 10) -> dict:
    """Next-item retrieval by embedding similarity: for each pair, all catalog items are ranked by
    cosine with the query item's embedding; the query item and every item the user rated before the
    target's time are excluded; the target's rank gives Recall@k (hit) and NDCG@k (1/log2(rank+2)).

    Args:
        emb: ``(n_items, dim)`` float32, L2-normalised, rows aligned with ``item_ids``.
        pairs: from :func:`corating_pairs` (one split). events: clean events (for the exclusions).

    Returns:
        ``{"recall@k", "ndcg@k", "pairs", "per_pair_ndcg": (n,) array, "per_pair_hit": (n,) array}``;
        pairs whose items have no embedding are skipped.
    """
    pos = {int(i): n for n, i in enumerate(item_ids)}
    rated = events[events["action"] == "rate"].sort_values("event_timestamp")
    by_user = {u: (g["event_timestamp"].astype("int64").to_numpy(), g["item_id"].to_numpy())
               for u, g in rated.groupby("user_id")}
    ndcg, hit = [], []
    for u, q, t, ts in zip(pairs["user_id"], pairs["query_item"], pairs["target_item"], pairs["event_timestamp"]):
        if q not in pos or t not in pos:
            continue
        scores = emb @ emb[pos[q]]
        times, items = by_user.get(u, (np.array([]), np.array([])))
        seen = [pos[i] for i in items[times < pd.Timestamp(ts).value] if i in pos]
        scores[seen] = -np.inf
        scores[pos[q]] = -np.inf
        target = scores[pos[t]]
        # ties count half, as everywhere (training/evaluate.py)
        others = np.delete(scores, pos[t])
        rank = float((others > target).sum() + 0.5 * (others == target).sum())
        g_ndcg, g_hit = per_user_gains(np.array([rank]), k)
        hit.append(float(g_hit[0]))
        ndcg.append(float(g_ndcg[0]))
    n = len(hit)
    return {f"recall@{k}": float(np.mean(hit)) if n else 0.0, f"ndcg@{k}": float(np.mean(ndcg)) if n else 0.0,
            "pairs": n, "per_pair_ndcg": np.asarray(ndcg), "per_pair_hit": np.asarray(hit)}


def best_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The global threshold in 0.05..0.95 that maximises micro-F1 of ``probs >= t`` on ``labels``
    (both ``(n, n_genres)``); tuned on validation, then applied to test."""
    from sklearn.metrics import f1_score

    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    scores = [f1_score(labels, probs >= t, average="micro", zero_division=0) for t in grid]
    return float(grid[int(np.argmax(scores))])


def micro_f1(probs: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Micro-averaged F1 of ``probs >= threshold`` against 0/1 ``labels`` (scikit-learn)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, probs >= threshold, average="micro", zero_division=0))


def probe_micro_f1(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                   test_x: np.ndarray, test_y: np.ndarray, seed: int = 0) -> float:
    """Genre micro-F1 of a linear probe on frozen embeddings: one-vs-rest logistic regression
    (scikit-learn) fitted on ``train``, one threshold chosen on ``val`` (:func:`best_threshold`),
    scored on ``test``. Genres without both classes in training are predicted at their training rate."""
    from sklearn.linear_model import LogisticRegression

    def fit_predict(xs):
        out = [np.zeros((len(x), train_y.shape[1])) for x in xs]
        for j in range(train_y.shape[1]):
            y = train_y[:, j]
            if y.min() == y.max():
                for o in out:
                    o[:, j] = y.mean() if len(y) else 0.0
                continue
            clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed).fit(train_x, y)
            for o, x in zip(out, xs):
                o[:, j] = clf.predict_proba(x)[:, 1]
        return out

    val_p, test_p = fit_predict([val_x, test_x])
    return micro_f1(test_p, test_y, best_threshold(val_p, val_y))
