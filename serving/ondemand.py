"""Request-time features, vectorised over all candidates of a request.

The two on-demand views of ``ranking_v1`` have numpy versions here that give Feast's answers
(``tests/serving/test_reader.py`` compares them with ``get_online_features``); any other on-demand
view of a service runs its own Feast transformation on a DataFrame of its inputs. The query-item
similarity of search is computed here too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _unit_rows(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n, d)`` float rows -> (float64 unit rows, ``(n,)`` ok mask: finite and non-zero norm)."""
    m = np.asarray(m, np.float64)
    if m.ndim != 2 or m.shape[1] == 0:
        return np.zeros((len(m), 1)), np.zeros(len(m), bool)
    norms = np.linalg.norm(m, axis=1)
    ok = np.isfinite(norms) & (norms > 0)
    return np.where(ok[:, None], m / np.where(ok, norms, 1.0)[:, None], 0.0), ok


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``(n, d)`` arrays (NaN rows = missing), float64 ``(n,)`` with NaN
    where either row is missing, zero or of a different width."""
    n = len(a)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        return np.full(n, np.nan)
    ua, oka = _unit_rows(a)
    ub, okb = _unit_rows(b)
    return np.where(oka & okb, np.einsum("ij,ij->i", ua, ub), np.nan)


def query_item_cosine(query: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Cosine of one query embedding ``(d,)`` with each item row of ``items`` ``(n, d)`` (NaN rows
    = missing); float64 ``(n,)``, NaN for missing items."""
    q = np.asarray(query, np.float64)[None, :]
    return cosine_rows(np.repeat(q, len(items), axis=0), items)


def user_item_similarity(cols: dict, request_ts: int) -> dict:
    """``user_item_cosine``: cosine of ``sequence_embedding`` and ``text_embedding`` (float64)."""
    return {"user_item_cosine": cosine_rows(cols["sequence_embedding"], cols["text_embedding"])}


def user_recency(cols: dict, request_ts: int) -> dict:
    """``days_since_last_rating``: ``(request_ts - last_rating_ts) / 86400`` days (float64, NaN if
    never rated)."""
    last = cols["last_rating_ts"]
    return {"days_since_last_rating": (float(request_ts) - last) / 86400.0}


VECTORISED = {"user_item_similarity": user_item_similarity, "user_recency": user_recency}


def run_udf(udf, inputs: dict, n: int, request_ts: int) -> dict:
    """Run a Feast pandas-mode transformation on ``inputs`` (column -> array; vectors ``(n, d)`` with
    NaN rows for missing, passed as arrays or None) and return its output columns as float arrays."""
    frame = {}
    for k, v in inputs.items():
        v = np.asarray(v)
        if v.ndim == 2:
            frame[k] = pd.Series([row if np.isfinite(row).all() else None for row in v], dtype=object)
        else:
            frame[k] = v
    frame["request_ts"] = np.full(n, request_ts, np.int64)
    out = udf(pd.DataFrame(frame))
    return {c: pd.to_numeric(out[c], errors="coerce").astype("float64").to_numpy() for c in out.columns}
