"""Metrics: AUC and log loss over labelled rows; NDCG@K and HR@K with sampled candidates.

Ranking protocol (stated in every output): for each evaluated user, the first positive (rating >=
4) in the test period is ranked against ``n`` items the user never rated that were in the catalog at
that moment (sampled with a fixed seed), all scored with features as of that moment. HR@K = share of
users whose positive ranks in the top K; NDCG@K = mean of 1/log2(rank + 2) for ranks < K (one
relevant item). Ties count half (the positive is placed in the middle of equal scores). This is
the sampled protocol of He et al. 2017 (NCF); sampled metrics overstate absolute quality (Krichene &
Rendle 2020), so compare numbers only under the same protocol.
"""

from __future__ import annotations

import numpy as np


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's ``roc_auc_score``)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy, natural log (scikit-learn's ``log_loss``), probabilities clipped to 1e-7."""
    from sklearn.metrics import log_loss as sk_log_loss

    return float(sk_log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1]))


def positive_ranks(group: np.ndarray, is_pos: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each group's single positive among its candidates: ``(group ids, ranks)``, sorted by
    group id; rank 0 = first; ties count half.

    Raises:
        ValueError: a group does not have exactly one positive.
    """
    order = np.argsort(group, kind="stable")
    g, p, s = group[order], is_pos[order], scores[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    ids, ranks = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        pos = np.flatnonzero(p[a:b])
        if len(pos) != 1:
            raise ValueError(f"group {g[a]} has {len(pos)} positives, expected 1")
        sp, others = s[a + pos[0]], np.delete(s[a:b], pos[0])
        ids.append(g[a])
        ranks.append(float((others > sp).sum() + 0.5 * (others == sp).sum()))
    return np.asarray(ids), np.asarray(ranks)


def per_user_gains(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(ndcg, hit)`` per user from positive ranks: 1/log2(rank + 2) and 1 when rank < k, else 0."""
    hit = ranks < k
    return np.where(hit, 1.0 / np.log2(ranks + 2), 0.0), hit.astype(np.float64)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> dict:
    """95% percentile-bootstrap interval of ``mean(a) - mean(b)`` over paired per-user values
    (users resampled with replacement; Efron & Tibshirani 1993)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (n, len(a)))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    return {"diff": float(a.mean() - b.mean()), "ci95": [float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))]}


def rank_metrics(group: np.ndarray, is_pos: np.ndarray, scores: np.ndarray, k: int = 10) -> dict:
    """NDCG@k and HR@k with one positive per group.

    Args:
        group: ``(n,)`` group id (one per evaluated positive); is_pos: ``(n,)`` bool, exactly one True
            per group; scores: ``(n,)`` float, higher = better.

    Returns:
        ``{"ndcg@k", "hr@k", "users"}``.

    Raises:
        ValueError: a group does not have exactly one positive.
    """
    _, ranks = positive_ranks(group, is_pos, scores)
    ndcg, hit = per_user_gains(ranks, k)
    n = len(ranks)
    return {f"ndcg@{k}": float(ndcg.sum()) / max(n, 1), f"hr@{k}": float(hit.sum()) / max(n, 1), "users": n}
