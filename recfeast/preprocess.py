"""Normalisation of numeric features and selection of informative columns.

The fitted statistics are saved beside the feature tables (``normalization.json``,
``feature_selection.json``) so training, serving and real-time ingestion apply the same transform.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from recfeast.errors import DataError

METHODS = ("zscore", "minmax")


def fit_normalizer(values: pd.Series, method: str, name: str) -> dict:
    """Fit a normaliser on ``values`` (NaN ignored).

    ``zscore``: ``(x - mean) / std`` (population std; std 0 -> 1). ``minmax``: ``(x - min) / (max - min)``
    (range 0 -> 1). Missing values are imputed with the fitted median before scaling.

    With no finite value to fit on (an optional column absent from the input) the transform maps
    every value to 0 and the stats say ``"fitted_on": 0``.

    Returns:
        ``{"method", "median", "mean", "std", "fitted_on"}`` or ``{"method", "median", "min", "max",
        "fitted_on"}``; floats and the number of values fitted on.

    Raises:
        DataError: unknown method.
    """
    if method not in METHODS:
        raise DataError(f"normaliser for {name!r}: unknown method {method!r}; expected one of {METHODS}")
    x = pd.to_numeric(values, errors="coerce").astype("float64")
    x = x[np.isfinite(x)]
    if x.empty:
        base = {"method": method, "median": 0.0, "fitted_on": 0}
        return {**base, "mean": 0.0, "std": 1.0} if method == "zscore" else {**base, "min": 0.0, "max": 1.0}
    stats = {"method": method, "median": float(x.median()), "fitted_on": int(x.size)}
    if method == "zscore":
        std = float(x.std(ddof=0))
        stats.update(mean=float(x.mean()), std=std if std > 0 else 1.0)
    else:
        lo, hi = float(x.min()), float(x.max())
        stats.update(min=lo, max=hi if hi > lo else lo + 1.0)
    return stats


def apply_normalizer(values, stats: dict) -> np.ndarray:
    """Apply fitted ``stats`` (from :func:`fit_normalizer`) to ``values``; returns float32 ``(n,)``."""
    x = pd.to_numeric(pd.Series(values), errors="coerce").astype("float64").to_numpy()
    x = np.where(np.isfinite(x), x, stats["median"])
    if stats["method"] == "zscore":
        y = (x - stats["mean"]) / stats["std"]
    else:
        y = (x - stats["min"]) / (stats["max"] - stats["min"])
    return y.astype(np.float32)


def select_columns(frame: pd.DataFrame, max_dominant_share: float = 0.995) -> tuple[list[str], dict[str, str]]:
    """Drop constant and near-constant columns.

    A column is dropped when its most frequent value covers more than ``max_dominant_share`` of the
    rows (0.995: a genre flag set on fewer than 0.5% of items carries almost no signal and would
    be fit on a handful of examples). This is the binary case of scikit-learn's
    ``VarianceThreshold(p * (1 - p))`` recipe, stated on the share so it reads for any dtype.

    Returns:
        ``(kept column names in input order, {dropped column: reason})``.
    """
    kept, dropped = [], {}
    n = len(frame)
    for col in frame.columns:
        counts = frame[col].value_counts(dropna=False)
        share = counts.iloc[0] / n if n else 1.0
        if counts.size <= 1 or share > max_dominant_share:
            what = "constant" if counts.size <= 1 else "near-constant"
            top = counts.index[0].item() if hasattr(counts.index[0], "item") else counts.index[0]
            dropped[col] = (f"{what}: value {top!r} in {share:.2%} of {n} rows "
                            f"(threshold {max_dominant_share:.1%})")
        else:
            kept.append(col)
    return kept, dropped


def is_finite_number(x) -> bool:
    """True for a finite int/float (not None, NaN or inf)."""
    return isinstance(x, (int, float, np.integer, np.floating)) and math.isfinite(float(x))
