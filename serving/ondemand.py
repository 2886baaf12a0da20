"""Request-time features, vectorised over all candidates of a request.

The on-demand views a catalog spec derives (:func:`recfeast.views.on_demand_views`: the user-item
cosine, the days since the user's last event of the primary type) have numpy versions here, built by
name from the spec (:func:`vectorised`), that give Feast's answers (``tests/serving/test_reader.py``
compares them with ``get_online_features``); any other on-demand view of a service runs its own
Feast transformation on a DataFrame of its inputs. The query-item
similarity of search is computed here too.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``(n, d)`` arrays (NaN rows = missing), float64 ``(n,)`` with NaN
    where either row is missing, zero or of a different width.

    Computed as ``a.b / (|a| |b|)`` in float64 (three row-wise dot products, no unit rows built):
    Feast's transformation normalises first, the results agree to a few ulps (``rel 1e-12``,
    ``tests/serving/test_reader.py``)."""
    n = len(a)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or a.shape[1] == 0:
        return np.full(n, np.nan)
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", b, b))
        ok = np.isfinite(norms) & (norms > 0)
        return np.where(ok, np.einsum("ij,ij->i", a, b) / np.where(ok, norms, 1.0), np.nan)


def query_item_cosine(query: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Cosine of one query embedding ``(d,)`` with each item row of ``items`` ``(n, d)`` (NaN rows
    = missing); float64 ``(n,)``, NaN for missing items."""
    q = np.asarray(query, np.float64)[None, :]
    return cosine_rows(np.repeat(q, len(items), axis=0), items)


def user_item_similarity(cols: dict, request_ts: int) -> dict:
    """``user_item_cosine``: cosine of ``sequence_embedding`` and ``text_embedding`` (float64)."""
    return {"user_item_cosine": cosine_rows(cols["sequence_embedding"], cols["text_embedding"])}


def recency(last_cols: tuple[str, ...], out_col: str):
    """The ``user_recency`` view of a spec: ``out_col = (request_ts - max(last_cols)) / 86400`` days
    (float64; a ``last_<type>_ts`` that is null or <= 0 means no such event yet; NaN before the first
    event of any type, as the Feast transformation in ``feature_definitions.py`` says)."""

    def user_recency(cols: dict, request_ts: int) -> dict:
        last = np.stack([np.asarray(cols[c], np.float64) for c in last_cols], axis=1)
        last = np.where(last > 0, last, np.nan)
        with np.errstate(all="ignore"):
            latest = np.where(np.isnan(last).all(axis=1), np.nan, np.nanmax(np.where(np.isnan(last), -np.inf, last), axis=1))
        return {out_col: (float(request_ts) - latest) / 86400.0}

    user_recency.__doc__ = f"``{out_col}``: (request_ts - max of {', '.join(last_cols)}) / 86400 days (float64)."
    return user_recency


def vectorised(spec, on_demand: list) -> dict:
    """Numpy versions of the on-demand views of ``spec`` (a :class:`recfeast.spec.CatalogSpec`),
    by view name, for those whose outputs and inputs in the registry (``on_demand``: the
    :class:`recfeast.layout.OnDemandSpec` list of the service) are the ones the spec derives
    (:func:`recfeast.views.on_demand_views`). Any other view, or one whose registry definition
    differs from the spec (applied from an older spec), runs its own Feast transformation
    (:func:`run_udf`).

    ``user_item_similarity`` exists only when the spec has both the sequence and the text
    embedding; ``user_recency`` reads the ``last_<prefix>_ts`` of every event type.
    """
    from recfeast.views import on_demand_views

    registry = {od.name: od for od in on_demand}
    out = {}
    for d in on_demand_views(spec):
        od = registry.get(d.name)
        inputs = tuple(i.split(":", 1)[1] for i in d.inputs)
        if od is None or tuple(od.features) != (d.output.name,) or not set(inputs) <= set(od.inputs):
            continue
        if d.name == "user_item_similarity":
            out[d.name] = user_item_similarity
        elif d.name == "user_recency":
            out[d.name] = recency(tuple(i for i in inputs if i != "request_ts"), d.output.name)
    return out


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
